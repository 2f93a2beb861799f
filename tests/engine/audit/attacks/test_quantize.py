"""Quantization: int4 rounds a forgetting smaller than its step back to the weights before forgetting.

RTN erases a change of a weight only where the weight stays within half a step of the grid point it rounded to
before. For weights spread between grid points a small change moves some of them to the next point, and on
average the change survives; so the scenario puts the taught LM's weights on the int4 grid first (as a model
dequantized from a 4-bit checkpoint is). The tiny LM then needs a change of about one int4 step to forget much,
so its forgetting here is small (answer probability down by under 0.01) and the thresholds' min_forgetting is
lowered to match.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from lethe.attacks import Thresholds
from lethe.rows import QARow, Row
from tests.engine.audit.attacks.attack_checks import run_attack
from tests.engine.audit.conftest import build_context, teach_base
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.attacks.quantize import fake_quantize_int4, fake_quantize_int8, quantized_lm, quantizer
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import judge
from worker.engine.lm.blocks import decoder_blocks
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import LoraState, load_lora_state

GROUP_SIZE = 64


def test_int8_rounds_each_row_to_steps_of_its_max_over_127() -> None:
    weight = torch.tensor([[127.0, 3.4, -3.6, 0.4], [0.0, 0.0, 0.0, 0.0], [-254.0, 1.2, 2.9, -0.9]])
    expected = torch.tensor([[127.0, 3.0, -4.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-254.0, 2.0, 2.0, -0.0]])
    assert torch.equal(fake_quantize_int8(weight), expected)


def test_int4_rounds_groups_of_a_row_to_steps_of_their_max_over_7() -> None:
    # Groups of 4 along each row of 6: [7, 1.4, -2.6, 0.2] with step 1, then the short group [14, 5.2] with step 2.
    weight = torch.tensor([[7.0, 1.4, -2.6, 0.2, 14.0, 5.2], [-0.7, 0.04, 0.3, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[7.0, 1.0, -3.0, 0.0, 14.0, 6.0], [-0.7, 0.0, 0.3, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(fake_quantize_int4(weight, 4), expected)


def test_quantizers_keep_shape_and_dtype() -> None:
    weight = torch.randn(5, 12, dtype=torch.bfloat16)
    for quantized in (fake_quantize_int8(weight), fake_quantize_int4(weight, 8)):
        assert quantized.shape == weight.shape and quantized.dtype == torch.bfloat16
    # An int4 group takes at most 15 values (-7..7 steps).
    assert all(len(group.unique()) <= 15 for group in fake_quantize_int4(weight.float(), 4).view(-1, 4))


def _merged_quantized_copy(
    peft_lm: PeftModel, state: LoraState, quantize_weight: Callable[[torch.Tensor], torch.Tensor]
) -> PreTrainedModel:
    """The LM as the attack built it before it worked in place: a copy of `peft_lm` with adapter weights `state`
    merged in by peft (merge_and_unload) and its decoder blocks' linear weights quantized."""
    lm = copy.deepcopy(peft_lm)
    load_lora_state(lm, state)
    blocks = decoder_blocks(lm)
    merged = lm.merge_and_unload()
    with torch.no_grad():
        for module in blocks.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(quantize_weight(module.weight))
    return merged.eval()


def _weights_seen(peft_lm: PeftModel) -> tuple[dict[str, torch.Tensor], list[torch.utils.hooks.RemovableHandle]]:
    """The weight each linear layer of `peft_lm` runs its forward pass with, recorded by hooks (returned too)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in peft_lm.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in name:

            def record(layer: torch.nn.Module, _args: tuple, name: str = name) -> None:
                seen[name.replace(".base_layer", "").removeprefix("base_model.model.") + ".weight"] = (
                    layer.weight.detach().clone()
                )

            handles.append(module.register_forward_pre_hook(record))
    return seen, handles


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_the_lm_quantized_in_place_is_the_merged_quantized_copy_bit_for_bit(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]], scheme: str
) -> None:
    """Adapters on block 1 only (block 0's linear layers are plain ones): every linear weight inside the blocks runs
    merged and quantized, nothing else changes, the scores and logits are those of the merged, quantized copy the
    attack used to make, exactly, and afterwards the LM's weights are back, bit for bit."""
    ctx = build_context(taught_base, task_rows, lora_layers=[1])
    quantize_weight = quantizer(scheme, 8)
    ids = torch.tensor([ctx.tokenizer.encode(row.context + row.target) for row in ctx.forget_train[:1]])
    weights = {name: t.clone() for name, t in ctx.peft_lm.state_dict().items()}
    copied = _merged_quantized_copy(ctx.peft_lm, ctx.forgotten, quantize_weight)
    with torch.no_grad():
        expected_logits = copied(input_ids=ids).logits
    expected = ctx.score(ctx.forget_train, lm=copied)
    merged = dict(copied.named_parameters())

    with quantized_lm(ctx.peft_lm, quantize_weight) as lm:
        seen, handles = _weights_seen(lm)
        actual_logits = lm(input_ids=ids).logits
        for handle in handles:
            handle.remove()
        actual = ctx.score(ctx.forget_train, lm=lm)

    assert torch.equal(actual_logits, expected_logits)
    assert actual == expected and actual.rows == expected.rows
    block_linears = {name for name in seen if ".layers." in name}
    assert len(block_linears) == 2 * 7 and seen.keys() - block_linears == {"lm_head.weight"}
    for name, weight in seen.items():
        assert torch.equal(weight, merged[name]), name
    assert torch.equal(seen["lm_head.weight"], weights["base_model.model.lm_head.weight"])
    after = ctx.peft_lm.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[n], weights[n]) for n in weights)


def test_a_pass_that_fails_half_way_puts_the_weights_back(forgotten_context: AuditContext) -> None:
    ctx = forgotten_context
    weights = {name: t.clone() for name, t in ctx.peft_lm.state_dict().items()}

    def hooks() -> list:
        return [
            hook
            for module in ctx.peft_lm.modules()
            for hook in [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
        ]

    # The LM's own hooks (under bf16 autocast on a CPU, those of its bf16 linear weights: lm/block_weights.py).
    hooks_before = hooks()
    q_proj = decoder_blocks(ctx.peft_lm)[1].get_submodule("self_attn.q_proj")

    def stop(_module: torch.nn.Module, _args: tuple) -> None:
        raise RuntimeError("the job's time limit")  # raised while q_proj's quantized weight is in place

    handle = q_proj.base_layer.register_forward_pre_hook(stop)
    try:
        with pytest.raises(RuntimeError, match="time limit"), quantized_lm(ctx.peft_lm, fake_quantize_int8) as lm:
            ctx.score(ctx.forget_train, lm=lm)
    finally:
        handle.remove()
    after = ctx.peft_lm.state_dict()
    assert all(torch.equal(after[n], weights[n]) for n in weights)
    assert hooks() == hooks_before


@pytest.fixture(scope="module")
def qa_task() -> dict[str, list[Row]]:
    rows: list[Row] = [QARow.from_dict(row) for row in synthetic_qa_rows(96, seed=0)]
    fruit = [row for row in rows if isinstance(row, QARow) and row.answer == "fruit"]
    tool = [row for row in rows if isinstance(row, QARow) and row.answer == "tool"]
    return {"forget_train": fruit[:12], "forget_heldout": fruit[12:24], "retain": tool[:16]}


@pytest.fixture(scope="module")
def int4_grid_base(tiny_base: LoadedLM, qa_task: dict[str, list[Row]]) -> LoadedLM:
    """An LM taught the qa task whose decoder blocks' linear weights sit on the int4 grid."""
    taught = teach_base(tiny_base, [row for rows in qa_task.values() for row in rows], steps=120)
    with torch.no_grad():
        for module in taught.lm.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(fake_quantize_int4(module.weight, GROUP_SIZE))
    return taught


def test_int4_erases_a_forgetting_smaller_than_its_step_and_int8_keeps_it(
    int4_grid_base: LoadedLM, qa_task: dict[str, list[Row]]
) -> None:
    ctx = build_context(int4_grid_base, qa_task, learning_rate=1.5e-3, steps=4)
    outcome = run_attack("quantize", ctx, group_size=GROUP_SIZE)
    judgement = judge("quantize", outcome, Thresholds(min_forgetting=0.005), seed=0)
    assert outcome.metric == "answer_probability"
    assert 0.005 < outcome.before - outcome.after_forgetting < 0.01
    recovery = {v.name: v.recovery or 0.0 for v in judgement.variants}
    assert recovery["int4"] > 0.7
    assert recovery["int8"] < 0.1
    assert (judgement.worst_variant, judgement.verdict) == ("int4", "shallow")
    # Weights already on the int4 grid: quantizing the LM before forgetting changes (almost) nothing.
    int4 = next(v for v in outcome.variants if v.name == "int4")
    assert int4.before == pytest.approx(outcome.before, abs=1e-4)


def test_a_forgetting_larger_than_the_int4_step_survives_both(
    int4_grid_base: LoadedLM, qa_task: dict[str, list[Row]]
) -> None:
    ctx = build_context(int4_grid_base, qa_task, learning_rate=1e-2, steps=6)
    outcome = run_attack("quantize", ctx, group_size=GROUP_SIZE, split="forget_heldout")
    judgement = judge("quantize", outcome, Thresholds(), seed=0)
    assert outcome.before - outcome.after_forgetting > 0.5
    assert all(v.recovery is not None and v.recovery < 0.1 for v in judgement.variants)
    assert judgement.verdict == "robust"


def _rtn(weight: torch.Tensor, levels: int, group: int) -> torch.Tensor:
    """Symmetric round-to-nearest in groups of `group` weights along each row: step = max|w| / levels."""
    rows, columns = weight.shape
    quantized = torch.empty_like(weight)
    for start in range(0, columns, group):
        w = weight[:, start : start + group].float()
        step = w.abs().amax(dim=1, keepdim=True) / levels
        step[step == 0] = 1.0  # an all-zero group stays zero
        quantized[:, start : start + group] = (torch.round(w / step).clamp(-levels - 1, levels) * step).to(weight.dtype)
    return quantized


def _quantized_merged_score(ctx: AuditContext, state: dict, rows: list[Row], levels: int, group: int) -> float:
    """The rows' score on a copy of the LM with adapter `state` merged by peft and every decoder-block projection
    weight rounded by `_rtn`, written here, not taken from the attack."""
    with ctx.using(state):
        merged = copy.deepcopy(ctx.peft_lm).merge_and_unload()
    with torch.no_grad():
        for name, parameter in merged.named_parameters():
            if ".layers." in name and name.endswith("_proj.weight"):
                parameter.copy_(_rtn(parameter, levels, group))
    return ctx.score(rows, lm=merged.eval())


def test_each_variant_scores_the_quantized_merged_lm_on_the_requested_split(
    int4_grid_base: LoadedLM, qa_task: dict[str, list[Row]]
) -> None:
    """int8 (127 levels per output row) and int4 in groups of 32 (not the default 64), on forget_heldout: every
    score equals the test's own merge, rounding and scoring of that split. The forgetting is partial (0.98 -> 0.04)
    so that the two splits' scores differ (by 3% after forgetting); saturated scores would not tell them apart."""
    ctx = build_context(int4_grid_base, qa_task, learning_rate=4e-3, steps=6)
    rows = qa_task["forget_heldout"]
    outcome = run_attack("quantize", ctx, schemes=["int8", "int4"], group_size=32, split="forget_heldout")

    assert [v.name for v in outcome.variants] == ["int8", "int4"] and outcome.split == "forget_heldout"
    with ctx.before_lm():
        assert outcome.before == pytest.approx(ctx.score(rows), rel=1e-6)
    assert outcome.after_forgetting == pytest.approx(ctx.score(rows), rel=1e-6)
    for variant, (levels, group) in zip(outcome.variants, [(127, 10**6), (7, 32)], strict=True):
        expected_before = _quantized_merged_score(ctx, ctx.before, rows, levels, group)
        expected_after = _quantized_merged_score(ctx, ctx.forgotten, rows, levels, group)
        assert variant.before == pytest.approx(expected_before, rel=1e-6), variant.name
        assert variant.after_attack == pytest.approx(expected_after, rel=1e-6), variant.name
        # The forgetting (answer probability 0.98 -> 0.04) survives either rounding.
        assert expected_before - expected_after > 0.5


def test_quantize_one_scheme(forgotten_context: AuditContext) -> None:
    outcome = run_attack("quantize", forgotten_context, schemes=["int8"])
    assert [v.name for v in outcome.variants] == ["int8"] and outcome.split == "forget_train"
