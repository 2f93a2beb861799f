"""Activation patching: patching the output of the block that forgot brings the task back."""

from __future__ import annotations

import pytest

from lethe.attacks import Thresholds
from lethe.rows import QARow, Row
from tests.engine.audit.attacks.attack_checks import run_attack
from tests.engine.audit.conftest import build_context
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.attacks.patch import _patched_score, patched_blocks
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, judge
from worker.engine.audit.replay import PassThrough, skipped_up_to
from worker.engine.lm.blocks import block_outputs, decoder_blocks, transformed_block_output
from worker.engine.lm.load import LoadedLM
from worker.engine.metrics.choice_scores import score_choices


def test_patched_blocks_run_from_the_first_adapted_block_to_before_the_last() -> None:
    assert patched_blocks(None, {0, 1, 2}, 3) == [0, 1]
    assert patched_blocks([1, 2], {0, 1, 2}, 3) == [1]
    # An adapter on blocks 1-2 only (as RMU trains): patching block 0 changes nothing, patching block 2 or 3 is
    # the LM before forgetting.
    assert patched_blocks(None, {1, 2}, 4) == [1]
    assert patched_blocks([0, 2, 3], {1, 2}, 4) == []
    assert patched_blocks(None, set(), 4) == []
    with pytest.raises(ValueError, match=r"patch layers \[3\] do not exist: the LM has 3 decoder blocks \(0-2\)"):
        patched_blocks([0, 3], {0, 1, 2}, 3)


def test_patching_the_block_that_forgot_brings_the_task_back(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    ctx = build_context(taught_base, task_rows, forget_modules=["layers.0."])
    outcome = run_attack("patch", ctx)
    judgement = judge("patch", outcome, Thresholds(), seed=0)
    assert (outcome.before, outcome.after_forgetting) == (1.0, 0.0)
    assert [(v.name, v.layer, v.recovery) for v in judgement.variants] == [("layer_0", 0, 1.0)]
    assert judgement.verdict == "shallow"


def test_patching_below_the_block_that_forgot_brings_nothing_back(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    ctx = build_context(taught_base, task_rows, forget_modules=["layers.1."])
    judgement = judge("patch", run_attack("patch", ctx, layers=[0]), Thresholds(), seed=0)
    assert (judgement.worst.recovery, judgement.verdict) == (0.0, "robust")


def test_patching_answer_probabilities_of_qa_rows(tiny_base: LoadedLM) -> None:
    rows = [QARow.from_dict(row) for row in synthetic_qa_rows(20, seed=0)]
    ctx = build_context(tiny_base, {"forget_train": rows[:8], "forget_heldout": rows[8:16], "retain": rows[16:]})
    outcome = run_attack("patch", ctx, split="forget_heldout")
    assert outcome.metric == "answer_probability" and [v.layer for v in outcome.variants] == [0]


def test_patching_needs_an_adapted_block_after_the_patched_one(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    ctx = build_context(taught_base, task_rows, lora_layers=[0])
    with pytest.raises(AttackNotApplicable, match="no block to patch among every block"):
        run_attack("patch", ctx)
    # Asking for a block the LM does not have is an error, not an attack that does not apply.
    with pytest.raises(ValueError, match="do not exist") as error:
        run_attack("patch", ctx, layers=[2])
    assert not isinstance(error.value, AttackNotApplicable)


def test_a_pass_that_does_not_batch_like_the_capturing_pass_is_refused(forgotten_context: AuditContext) -> None:
    ctx = forgotten_context
    block = decoder_blocks(ctx.peft_lm)[0]
    with block_outputs(block) as captured:
        ctx.score(ctx.forget_train)
    with pytest.raises(RuntimeError, match="does not batch like"):
        _patched_score(ctx, ctx.forget_train, [output[:, :-1] for output in captured], 0)
    with pytest.raises(RuntimeError, match="fewer forward calls"):
        _patched_score(ctx, ctx.forget_train, captured * 2, 0)
    assert not any(hook.__module__.startswith("worker.") for hook in block._forward_hooks.values())
    # The forgotten LM's own outputs patched in change nothing.
    assert _patched_score(ctx, ctx.forget_train, captured, 0) == ctx.score(ctx.forget_train)


@pytest.mark.parametrize("layer", [0, 1])
def test_skipping_the_blocks_up_to_the_patched_one_changes_no_number(
    forgotten_context: AuditContext, layer: int
) -> None:
    """In a patched pass the blocks up to the patched one are pass-throughs; with the LM's own outputs patched in,
    every row's log-likelihoods equal the unpatched LM's, and the blocks are back afterwards."""
    ctx = forgotten_context
    blocks = decoder_blocks(ctx.peft_lm)
    originals = list(blocks)
    with block_outputs(blocks[layer]) as captured:
        plain = score_choices(ctx.peft_lm, ctx.tokenizer, ctx.forget_train, ctx.batch_size).loglikelihoods
    replacements = iter(captured)
    with skipped_up_to(blocks, layer), transformed_block_output(blocks[layer], lambda _hidden: next(replacements)):
        assert all(isinstance(blocks[i], PassThrough) for i in range(layer + 1))
        patched = score_choices(ctx.peft_lm, ctx.tokenizer, ctx.forget_train, ctx.batch_size).loglikelihoods
    assert [list(row) for row in patched] == [list(row) for row in plain]
    assert list(decoder_blocks(ctx.peft_lm)) == originals
