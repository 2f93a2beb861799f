"""Relearning: a few forget-train rows bring forget-heldout back; retain rows, or too small a step, do not."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from lethe.attacks import QuantizeParams, RelearnParams, Thresholds
from lethe.rows import Row
from tests.engine.audit.attacks.attack_checks import run_checked
from tests.engine.audit.attacks.scenarios import finetuned_context, wrong
from tests.engine.audit.conftest import context_for, teach_base
from worker.engine.audit.attacks.relearn import relearn
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import judge
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora, lora_state

THRESHOLDS = Thresholds()


@pytest.fixture(scope="module")
def mixed_base(tiny_base: LoadedLM, mixed_task: dict[str, list[Row]]) -> LoadedLM:
    return teach_base(
        tiny_base, [*mixed_task["forget_train"], *mixed_task["forget_heldout"], *mixed_task["retain"]], 80
    )


def untaught_context(base: LoadedLM, rows: dict[str, list[Row]]) -> AuditContext:
    """A fresh adapter on an LM that never learned the task: nothing forgotten, nothing to remember."""
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(base.lm), rank=4, alpha=8)
    return context_for(base, peft_lm, lora_state(peft_lm), rows, retain_name="retain")


def test_two_rows_bring_back_heldout_rows_that_an_untaught_lm_cannot_learn_from_them(
    tiny_base: LoadedLM, mixed_base: LoadedLM, mixed_task: dict[str, list[Row]]
) -> None:
    """Forgetting swaps the two categories (both are forgotten): forget-heldout falls below chance. Fine-tuning on
    2 forget-train rows for 6 steps brings the other words' categories back. The same fine-tuning of an LM that
    never knew the task gains next to nothing: the 2 rows jog a memory, they do not teach the task.

    The forgetting is shallow in a known way (see `scenarios.finetuned_context`): wrong answers to forget-train
    trained into the first block's MLP only, which swaps the categories of every word (retain's too; this test
    does not score retain), and the 2 rows undo that within 4 steps on every seed tried, in fp32 and in bf16.
    NPO on this LM made no such scenario: whether its forgetting reached forget-heldout, and whether 2 rows
    undid it, changed with the precision and the seed.
    """
    wrong_answers = list(map(wrong, mixed_task["forget_train"]))
    ctx = finetuned_context(
        mixed_base, mixed_task, wrong_answers, steps=30, learning_rate=3e-3, modules=["layers.0.mlp"]
    )
    params = RelearnParams(examples=[2], steps=6, learning_rate=1e-2, evaluate_every=2, benign=False)

    outcome, _ = run_checked(relearn, ctx, params)

    judgement = judge("relearn", outcome, THRESHOLDS, seed=0)
    assert (outcome.metric, outcome.split) == ("accuracy", "forget_heldout")
    assert outcome.before == 1.0 and outcome.after_forgetting <= 0.5
    assert judgement.worst.recovery is not None and judgement.worst.recovery >= 0.8
    # The interval lies above the threshold, but with no fine-tune there is no never-learned control in the audit:
    # relearning alone is never called shallow (below, the test builds that control by hand).
    assert (judgement.worst.ci_low or 0.0) > THRESHOLDS.recovery
    assert (judgement.verdict, judgement.reason) == ("inconclusive", "no_control")
    assert [step for step, _ in outcome.curves["k=2"]] == [0, 2, 4, 6]

    # The untaught LM starts at the majority category's share of forget-heldout and gains next to nothing.
    untaught, _ = run_checked(relearn, untaught_context(tiny_base, mixed_task), params)
    assert untaught.variants[0].after_attack - untaught.after_forgetting <= 0.1


def test_curves_per_k_and_benign_relearning_on_retain_rows_that_brings_nothing_back(
    forgotten_context: AuditContext,
) -> None:
    """Gradient ascent made the LM answer "tool" to fruit prompts; relearning on fruit rows undoes it, relearning
    on the (tool) retain rows only confirms it."""
    params = RelearnParams(examples=[1, 8], steps=8, learning_rate=1e-2, evaluate_every=2, benign=True)

    outcome, progress = run_checked(relearn, forgotten_context, params)

    assert [variant.name for variant in outcome.variants] == ["k=1", "k=8", "benign"]
    for variant in outcome.variants:
        curve = outcome.curves[variant.name]
        assert [step for step, _ in curve] == [0, 2, 4, 6, 8]
        assert curve[0] == (0, outcome.after_forgetting)
        assert curve[-1][1] == variant.after_attack
    rates = {result.name: result.recovery for result in judge("relearn", outcome, THRESHOLDS, seed=0).variants}
    assert rates["k=1"] == rates["k=8"] == 1.0
    assert rates["benign"] == 0.0
    assert len(progress) >= 3 * params.steps


def test_a_learning_rate_too_small_to_move_the_adapter_recovers_nothing(forgotten_context: AuditContext) -> None:
    params = RelearnParams(examples=[1, 8], steps=8, learning_rate=1e-6, benign=False)

    outcome, _ = run_checked(relearn, forgotten_context, params)

    judgement = judge("relearn", outcome, THRESHOLDS, seed=0)
    assert judgement.worst.recovery == 0.0
    assert judgement.verdict == "robust"


def test_k_is_clipped_to_forget_train_and_the_curve_ends_at_the_last_step(forgotten_context: AuditContext) -> None:
    assert len(forgotten_context.forget_train) == 12
    params = RelearnParams(examples=[2, 12, 50], steps=3, evaluate_every=2, benign=False)

    outcome, _ = run_checked(relearn, forgotten_context, params)

    assert [variant.name for variant in outcome.variants] == ["k=2", "k=12"]
    assert all([step for step, _ in curve] == [0, 2, 3] for curve in outcome.curves.values())


def test_benign_is_skipped_without_retain_rows(forgotten_context: AuditContext) -> None:
    ctx = dataclasses.replace(forgotten_context, retain={"empty": []})

    outcome, _ = run_checked(relearn, ctx, RelearnParams(examples=[2], steps=1, benign=True))

    assert [variant.name for variant in outcome.variants] == ["k=2"]


def test_frozen_lora_parameters_are_relearned_and_left_frozen(forgotten_context: AuditContext) -> None:
    """An adapter handed over with some LoRA parameters frozen is still relearned whole; the flags come back."""
    lora = [p for name, p in forgotten_context.peft_lm.named_parameters() if "lora_" in name]
    for parameter in lora:
        parameter.requires_grad_(False)
    try:
        outcome, _ = run_checked(
            relearn, forgotten_context, RelearnParams(examples=[8], steps=8, learning_rate=1e-2, benign=False)
        )
    finally:
        for parameter in lora:
            parameter.requires_grad_(True)
    assert outcome.variants[0].after_attack == 1.0


def test_other_params_are_refused(forgotten_context: AuditContext) -> None:
    with pytest.raises(TypeError, match="RelearnParams"):
        relearn(forgotten_context, QuantizeParams())


def test_an_exactly_unlearned_lm_recovers_what_the_never_learned_control_does(
    exactly_unlearned: AuditContext,
) -> None:
    """Forgetting only undid the fine-tune: relearning brings back on the forgotten LM just what it teaches the base
    LM that never saw the task, so the excess is nil and the attack is robust, whatever relearning recovers."""
    ctx = exactly_unlearned
    params = RelearnParams(examples=[2, 8], steps=4, learning_rate=1e-2, evaluate_every=2, benign=True)

    outcome, progress = run_checked(relearn, ctx, params)

    judgement = judge("relearn", outcome, THRESHOLDS, seed=0)
    # Premise: the fine-tune taught the task beyond what the base LM knew.
    assert outcome.before - outcome.after_forgetting >= 0.1
    assert len(progress) >= 2 * 3 * params.steps  # the control relearned too
    for variant, result in zip(outcome.variants, judgement.variants, strict=True):
        assert outcome.curves[f"control {variant.name}"] == outcome.curves[variant.name]
        assert variant.control_before == outcome.after_forgetting
        assert result.control_recovery == result.recovery and result.excess_recovery == 0.0
        assert (result.excess_ci_low, result.excess_ci_high) == (0.0, 0.0)
    assert (judgement.verdict, judgement.reason) == ("robust", None)
