"""Activation patching (a diagnostic): patching a component in a window changes that component there and nothing
below it, the component that forgot gives the answer logits back, and a late patch no longer recovers by
construction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lethe.rows import QARow, Row
from tests.engine.audit.attacks.attack_checks import run_diagnostic
from tests.engine.audit.conftest import build_context
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.attacks.patch import patched, recorded
from worker.engine.audit.context import AuditContext
from worker.engine.audit.diagnostics import ANSWER_TOKENS, DiagnosticOutcome, KnowledgeRecovery, answer_logits
from worker.engine.audit.outcome import AttackNotApplicable
from worker.engine.audit.replay import replayed
from worker.engine.lm.blocks import block_outputs, decoder_blocks
from worker.engine.lm.load import LoadedLM


def _krs(outcome: DiagnosticOutcome) -> dict[str, float | None]:
    return {v.name: None if v.krs is None else v.krs.value for v in outcome.variants}


@contextlib.contextmanager
def observed(ctx: AuditContext) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Every block's down_proj input and attention output in the passes inside, by our own forward hooks (which see
    the input after any pre-hook changed it, and the output after any hook changed it)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for layer, block in enumerate(decoder_blocks(ctx.peft_lm)):

        def coefficients(_m: torch.nn.Module, args: tuple, _out: Any, key: str = f"coef{layer}") -> None:
            seen.setdefault(key, []).append(args[0].detach().clone())

        def attention(_m: torch.nn.Module, _args: tuple, out: Any, key: str = f"attn{layer}") -> None:
            seen.setdefault(key, []).append((out[0] if isinstance(out, tuple) else out).detach().clone())

        handles.append(block.get_submodule("mlp.down_proj").register_forward_hook(coefficients))
        handles.append(block.get_submodule("self_attn").register_forward_hook(attention))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _inputs(ctx: AuditContext) -> torch.Tensor:
    prompts = [row.context for row in ctx.forget_train[:4]]
    ids = [ctx.tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
    width = min(len(i) for i in ids)
    return torch.tensor([i[:width] for i in ids])


@pytest.mark.parametrize(("component", "layer"), [("mlp_coefficients", 1), ("attention_output", 0)])
def test_patching_changes_only_the_windows_component(
    forgotten_context: AuditContext, component: str, layer: int
) -> None:
    """An independent pass (our own hooks, output_hidden_states) of the forgotten LM with `component` of block
    `layer` patched: that activation is the pre-forgetting LM's, everything before it in the forward pass the
    forgotten LM's, and the residual stream is never replaced."""
    ctx = forgotten_context
    blocks = decoder_blocks(ctx.peft_lm)
    input_ids = _inputs(ctx)
    key = {"mlp_coefficients": "coef", "attention_output": "attn"}[component]
    with torch.no_grad():
        with ctx.before_lm(), observed(ctx) as before, recorded(blocks, component, [layer]) as activations:
            ctx.peft_lm(input_ids=input_ids)
        with observed(ctx) as forgotten:
            forgotten_hidden = ctx.peft_lm(input_ids=input_ids, output_hidden_states=True).hidden_states
        with patched(blocks, component, activations), observed(ctx) as patched_seen:
            patched_hidden = ctx.peft_lm(input_ids=input_ids, output_hidden_states=True).hidden_states

    assert torch.equal(patched_seen[f"{key}{layer}"][0], before[f"{key}{layer}"][0])
    assert not torch.equal(forgotten[f"{key}{layer}"][0], before[f"{key}{layer}"][0])
    # Upstream of the patched activation (lower blocks; block 1's attention runs before its MLP): the forgotten LM's.
    upstream = [f"coef{i}" for i in range(layer)] + [
        f"attn{i}" for i in range(layer + 1) if (i, key) != (layer, "attn")
    ]
    for name in upstream:
        assert torch.equal(patched_seen[name][0], forgotten[name][0]), name
    for i in range(layer + 1):
        # hidden_states[i] is the input of block i: untouched up to the patched block.
        assert torch.equal(patched_hidden[i], forgotten_hidden[i]), i
    # Downstream the patch shows, and it is not the pre-forgetting residual stream (block `layer`'s other terms and
    # the lower blocks' changes stay the forgotten LM's).
    assert not torch.equal(patched_hidden[layer + 1], forgotten_hidden[layer + 1])
    with torch.no_grad(), ctx.before_lm():
        before_hidden = ctx.peft_lm(input_ids=input_ids, output_hidden_states=True).hidden_states
    assert not torch.allclose(patched_hidden[layer + 1], before_hidden[layer + 1], atol=1e-4)


def test_patching_the_component_that_forgot_gives_the_logits_back(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    """Forgetting in block 0's attention only: patching its output gives the pre-forgetting logits (KRS 1); the
    last block's MLP coefficients and attention output do not, although patching the last block's whole output
    (the residual stream, as patch did before) would by construction."""
    ctx = build_context(taught_base, task_rows, forget_modules=["layers.0.self_attn."])
    krs = _krs(run_diagnostic("patch", ctx, window=1))
    assert krs["attention_output@0-0"] == pytest.approx(1.0, abs=1e-6)
    assert krs["mlp_coefficients@1-1"] is not None and krs["mlp_coefficients@1-1"] < 0.5
    assert krs["attention_output@1-1"] is not None and krs["attention_output@1-1"] < 0.95

    # The old shortcut: block 1's whole output from the LM before forgetting gives its logits exactly.
    blocks = decoder_blocks(ctx.peft_lm)
    with ctx.before_lm():
        before = answer_logits(ctx.peft_lm, ctx.tokenizer, ctx.forget_train, ctx.batch_size, ctx.limit)
        with block_outputs(blocks[1]) as residual:
            answer_logits(ctx.peft_lm, ctx.tokenizer, ctx.forget_train, ctx.batch_size, ctx.limit)
    forgotten = answer_logits(ctx.peft_lm, ctx.tokenizer, ctx.forget_train, ctx.batch_size, ctx.limit)
    with replayed(blocks, 1, residual):
        shortcut = answer_logits(ctx.peft_lm, ctx.tokenizer, ctx.forget_train, ctx.batch_size, ctx.limit)
    recovery = KnowledgeRecovery.of_logits(before, forgotten, seed=0)
    estimate = recovery.score(recovery.errors(shortcut))
    assert estimate is not None and estimate.value == pytest.approx(1.0, abs=1e-6)


def test_at_the_first_block_patching_equals_restoring(forgotten_context: AuditContext) -> None:
    """Block 0's attention sees the same input in both LMs, so its pre-forgetting output is what restoring its
    weights gives: two routes, one number."""
    patch = _krs(run_diagnostic("patch", forgotten_context, window=1, components=["attention_output"], layers=[0]))
    restore = _krs(run_diagnostic("restore", forgotten_context, window=1, components=["attention"], layers=[0]))
    assert patch["attention_output@0-0"] == pytest.approx(restore["attention@0-0"], abs=1e-6)
    assert 0.5 < patch["attention_output@0-0"] < 1.0  # type: ignore[operator]


def test_krs_equals_a_hand_patched_pass(forgotten_context: AuditContext) -> None:
    """attention_output@1-1 against our own computation: per row alone (no batching, no replay), block 1's attention
    output of the LM before forgetting put into the forgotten LM by our own hook, MSEs by hand."""
    ctx = forgotten_context
    outcome = run_diagnostic("patch", ctx, window=1, components=["attention_output"], layers=[1])
    attention = decoder_blocks(ctx.peft_lm)[1].get_submodule("self_attn")
    per_row = []
    for row in ctx.forget_train:
        context = ctx.tokenizer.encode(row.context, add_special_tokens=False)
        answer = ctx.tokenizer.encode(row.context + row.target, add_special_tokens=False)[len(context) :]
        ids = torch.tensor([context + answer[:ANSWER_TOKENS]])
        span = slice(len(context) - 1, ids.shape[1] - 1)
        kept: list[torch.Tensor] = []
        with torch.no_grad():
            handle = attention.register_forward_hook(lambda _m, _a, out, kept=kept: kept.append(out[0]))
            with ctx.before_lm():
                before = ctx.peft_lm(input_ids=ids).logits[0, span].float()
            handle.remove()
            forgotten = ctx.peft_lm(input_ids=ids).logits[0, span].float()
            handle = attention.register_forward_hook(lambda _m, _a, out, kept=kept: (kept[0], *out[1:]))
            after = ctx.peft_lm(input_ids=ids).logits[0, span].float()
            handle.remove()
        per_row.append(float(1 - ((before - after) ** 2).mean() / ((before - forgotten) ** 2).mean()))
    (variant,) = outcome.variants
    assert variant.krs is not None and variant.krs.n == len(per_row)
    assert variant.krs.value == pytest.approx(sum(per_row) / len(per_row), abs=0.02)
    assert variant.krs.ci_low is not None and variant.krs.ci_high is not None
    assert variant.krs.ci_low <= variant.krs.value <= variant.krs.ci_high


def test_windows_below_the_adapter_are_left_out(taught_base: LoadedLM, task_rows: dict[str, list[Row]]) -> None:
    ctx = build_context(taught_base, task_rows, lora_layers=[1])
    outcome = run_diagnostic("patch", ctx, window=1)
    assert [v.name for v in outcome.variants] == ["mlp_coefficients@1-1", "attention_output@1-1"]
    with pytest.raises(AttackNotApplicable, match="no window reaches a block with an adapter"):
        run_diagnostic("patch", ctx, window=1, layers=[0])
    # Asking for a block the LM does not have is an error, not a diagnostic that does not apply.
    with pytest.raises(ValueError, match="do not exist") as error:
        run_diagnostic("patch", ctx, layers=[2])
    assert not isinstance(error.value, AttackNotApplicable)


def test_patching_answer_logits_of_qa_rows(tiny_base: LoadedLM) -> None:
    rows: list[Row] = [QARow.from_dict(row) for row in synthetic_qa_rows(20, seed=0)]
    ctx = build_context(tiny_base, {"forget_train": rows[:8], "forget_heldout": rows[8:16], "retain": rows[16:]})
    outcome = run_diagnostic("patch", ctx, split="forget_heldout")
    # The default 5-window covers both blocks of the tiny LM.
    assert (outcome.split, outcome.rows, [v.name for v in outcome.variants]) == (
        "forget_heldout",
        8,
        ["mlp_coefficients@0-1", "attention_output@0-1"],
    )


def test_a_pass_that_does_not_batch_like_the_recording_pass_is_refused(forgotten_context: AuditContext) -> None:
    ctx = forgotten_context
    blocks = decoder_blocks(ctx.peft_lm)
    rows = ctx.forget_train
    with recorded(blocks, "mlp_coefficients", [0]) as activations:
        own = answer_logits(ctx.peft_lm, ctx.tokenizer, rows, ctx.batch_size, ctx.limit)
    shortened = {0: [a[:, :-1] for a in activations[0]]}
    with pytest.raises(RuntimeError, match="does not batch like"), patched(blocks, "mlp_coefficients", shortened):
        answer_logits(ctx.peft_lm, ctx.tokenizer, rows, ctx.batch_size, ctx.limit)
    doubled = {0: activations[0] * 2}
    with pytest.raises(RuntimeError, match="fewer forward calls"), patched(blocks, "mlp_coefficients", doubled):
        answer_logits(ctx.peft_lm, ctx.tokenizer, rows, ctx.batch_size, ctx.limit)
    down_proj = blocks[0].get_submodule("mlp.down_proj")
    assert not down_proj._forward_pre_hooks and not down_proj._forward_hooks
    # The forgotten LM's own activations patched in change nothing.
    with patched(blocks, "mlp_coefficients", activations):
        again = answer_logits(ctx.peft_lm, ctx.tokenizer, rows, ctx.batch_size, ctx.limit)
    assert all(torch.equal(a, b) for a, b in zip(own, again, strict=True))
