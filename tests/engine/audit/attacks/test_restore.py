"""Parameter restoration: restoring the adapter parameters that did the forgetting brings the task back."""

from __future__ import annotations

import pytest

from lethe.attacks import Thresholds
from lethe.rows import QARow, Row
from tests.engine.audit.attacks.attack_checks import run_attack
from tests.engine.audit.conftest import build_context
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.attacks.restore import parameter_groups
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, judge
from worker.engine.lm.load import LoadedLM


def adapter_names(blocks: list[int]) -> list[str]:
    """Adapter parameter names as peft writes them for a Llama, on q_proj and up_proj of `blocks`."""
    return [
        f"base_model.model.model.layers.{block}.{module}.lora_{matrix}.default.weight"
        for block in blocks
        for module in ("self_attn.q_proj", "mlp.up_proj")
        for matrix in ("A", "B")
    ]


def test_parameter_groups_select_blocks_and_modules() -> None:
    names = adapter_names([0, 1, 11])
    groups = {g.name: g for g in parameter_groups(names, ["last_1", "attention", "mlp", "per_layer"], 12)}
    assert set(groups) == {"last_1", "attention", "mlp", "layer_0", "layer_1", "layer_11"}
    assert groups["last_1"].parameters == set(adapter_names([11]))
    # "layers.1." is block 1 only, not block 11.
    assert groups["layer_1"].parameters == set(adapter_names([1])) and groups["layer_1"].layer == 1
    assert groups["attention"].parameters == {n for n in names if "q_proj" in n}
    assert groups["mlp"].parameters == {n for n in names if "up_proj" in n}


def test_groups_holding_no_or_every_adapter_parameter_are_skipped() -> None:
    names = adapter_names([0, 1])
    # last_4 of 2 blocks is the whole adapter (the LM before forgetting); last_1 of 4 blocks holds nothing.
    assert parameter_groups(names, ["last_4"], 2) == []
    assert parameter_groups(names, ["last_1"], 4) == []
    assert [g.name for g in parameter_groups(names, ["last_2", "per_layer"], 4)] == ["layer_0", "layer_1"]


@pytest.mark.parametrize("forgetting_block", [0, 1])
def test_restoring_the_block_that_forgot_brings_the_task_back(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]], forgetting_block: int
) -> None:
    other_block = 1 - forgetting_block
    ctx = build_context(taught_base, task_rows, forget_modules=[f"layers.{forgetting_block}."])
    outcome = run_attack("restore", ctx, groups=["last_1", "per_layer"])
    judgement = judge("restore", outcome, Thresholds(), seed=0)
    recovery = {v.name: v.recovery for v in judgement.variants}
    assert (outcome.before, outcome.after_forgetting) == (1.0, 0.0)
    assert recovery[f"layer_{forgetting_block}"] == 1.0
    # The control: restoring the block that did not forget brings nothing back.
    assert recovery[f"layer_{other_block}"] == 0.0
    assert recovery["last_1"] == (1.0 if forgetting_block == 1 else 0.0)
    assert judgement.verdict == "shallow"
    assert {v.name: v.layer for v in outcome.variants} == {"last_1": None, "layer_0": 0, "layer_1": 1}


def test_an_adapter_on_one_block_leaves_only_the_module_groups(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    ctx = build_context(taught_base, task_rows, lora_layers=[1])
    outcome = run_attack("restore", ctx)
    assert [v.name for v in outcome.variants] == ["attention", "mlp"]
    with pytest.raises(AttackNotApplicable, match="none of the groups"):
        run_attack("restore", ctx, groups=["last_1", "per_layer"])


def test_restore_on_the_heldout_split(forgotten_context: AuditContext) -> None:
    outcome = run_attack("restore", forgotten_context, groups=["per_layer"], split="forget_heldout")
    assert outcome.split == "forget_heldout"
    assert [v.layer for v in outcome.variants] == [0, 1]


def test_replayed_passes_give_the_numbers_of_full_passes(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    """Each variant's pass starts at its group's first block from the forgotten pass's outputs below it; its score
    must equal a full pass of the LM with the group restored (here on qa rows, whose score is continuous)."""
    qa: list[Row] = [QARow.from_dict(row) for row in synthetic_qa_rows(24, seed=4)]
    ctx = build_context(taught_base, {"forget_train": qa[:12], "forget_heldout": qa[12:], "retain": qa[:4]})
    outcome = run_attack("restore", ctx, groups=["last_1", "per_layer", "mlp"])
    groups = {g.name: g for g in parameter_groups(list(ctx.forgotten), ["last_1", "per_layer", "mlp"], 2)}
    for variant in outcome.variants:
        state = {n: ctx.before[n] if n in groups[variant.name].parameters else v for n, v in ctx.forgotten.items()}
        with ctx.using(state):
            assert variant.after_attack == ctx.score(ctx.forget_train), variant.name
