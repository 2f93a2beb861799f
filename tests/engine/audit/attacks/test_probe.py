"""Probe depth: probes below the block that forgot still solve the task the LM's answers forgot.

The forget set here holds both fruit and tool rows (the conftest's forget set is all fruit, so the choice token
alone gives every answer away), and 200 rows to fit the probes on.
"""

from __future__ import annotations

import dataclasses

import pytest

from lethe.attacks import ProbeParams, Thresholds
from lethe.rows import ChoiceRow, QARow, Row
from tests.engine.audit.attacks.attack_checks import run_attack
from tests.engine.audit.conftest import build_context
from tests.tiny_lm import synthetic_choice_rows, synthetic_qa_rows
from worker.engine.audit.attacks.implementations import attack_implementation
from worker.engine.audit.attacks.probe import probe_rows
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, judge
from worker.engine.audit.run import never_learned
from worker.engine.lm.load import LoadedLM


@pytest.fixture(scope="module")
def whole_task() -> dict[str, list[Row]]:
    rows: list[Row] = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(316, seed=1)]
    return {"forget_train": rows[:200], "forget_heldout": rows[200:300], "retain": rows[300:]}


def test_probes_below_the_block_that_forgot_still_solve_the_task(
    taught_base: LoadedLM, whole_task: dict[str, list[Row]]
) -> None:
    ctx = build_context(taught_base, whole_task, forget_modules=["layers.1."])
    outcome = run_attack("probe", ctx)
    judgement = judge("probe", outcome, Thresholds(), seed=0)
    assert (outcome.metric, outcome.split) == ("probe_accuracy", "forget_heldout")
    assert outcome.before > 0.85 and outcome.after_forgetting < 0.6
    block_0 = next(v for v in judgement.variants if v.layer == 0)
    # Block 0's adapter is untouched: its states, and the probe on them, are those before forgetting.
    assert block_0.after_attack > 0.85 and block_0.recovery == 1.0
    # 100 heldout rows: the whole interval, at the Bonferroni level over the 2 blocks, lies above the threshold...
    assert block_0.n == 100 and block_0.confidence == 1 - 0.05 / 2 and (block_0.ci_low or 0.0) > 0.25
    # ...but a probe fitted on the task can find it in an LM that never knew it: without a control, not shallow.
    assert (judgement.verdict, judgement.reason) == ("inconclusive", "no_control")


def test_an_lm_that_never_knew_the_task_shows_no_recovery(
    tiny_base: LoadedLM, whole_task: dict[str, list[Row]]
) -> None:
    ctx = build_context(tiny_base, whole_task, forget_modules=["layers.1."])
    outcome = run_attack("probe", ctx)
    # The probes, fitted on the task, beat the untaught LM's own answers (near chance)...
    assert max(v.after_attack for v in outcome.variants) > outcome.before + 0.1
    # ...but forgetting removed nothing, so no recovery is claimed.
    assert judge("probe", outcome, Thresholds(), seed=0).verdict == "inconclusive"


def test_probe_reports_one_variant_per_decoder_block(forgotten_context: AuditContext) -> None:
    outcome = run_attack("probe", forgotten_context)
    assert [(v.name, v.layer) for v in outcome.variants] == [("layer_0", 0), ("layer_1", 1)]


def test_probe_rows_put_the_true_answer_against_the_perturbed_ones() -> None:
    qa_row = QARow("The fig is a", "fruit", perturbed_answers=("tool", "axe"))
    assert probe_rows([qa_row, QARow("The saw is a", "tool")]) == [
        ChoiceRow(qa_row.context, (" fruit", " tool", " axe"), 0)
    ]
    choice_row = ChoiceRow("The fig is a", (" tool", " fruit"), 1)
    assert probe_rows([choice_row]) == [choice_row]


def test_qa_rows_are_probed(tiny_base: LoadedLM) -> None:
    rows = [QARow.from_dict(row) for row in synthetic_qa_rows(40, seed=0)]
    ctx = build_context(tiny_base, {"forget_train": rows[:20], "forget_heldout": rows[20:36], "retain": rows[36:]})
    outcome = run_attack("probe", ctx)
    assert [v.layer for v in outcome.variants] == [0, 1]
    # Every heldout row has a perturbed answer: 16 rows, each a 0/1 probe prediction, the accuracy their mean.
    for variant in outcome.variants:
        rows = variant.after_attack.rows  # type: ignore[attr-defined]
        assert len(rows) == 16 and set(rows) <= {0.0, 1.0} and variant.after_attack == sum(rows) / 16
    # Gradient ascent took the LM's own answers below chance while the probes still find the true answer: a
    # recovery, which without a never-learned control (no fine-tune) is never called shallow.
    judgement = judge("probe", outcome, Thresholds(), seed=0)
    assert outcome.after_forgetting < 0.5 <= min(v.after_attack for v in outcome.variants)
    assert (judgement.verdict, judgement.reason) == ("inconclusive", "no_control")


def test_qa_rows_without_perturbed_answers_cannot_be_probed(tiny_base: LoadedLM) -> None:
    rows: list[Row] = [QARow(f"The {word} is a", "fruit") for word in ("apple", "pear", "plum", "fig")]
    ctx = build_context(tiny_base, {"forget_train": rows[:2], "forget_heldout": rows[2:], "retain": rows[:1]})
    with pytest.raises(AttackNotApplicable, match="perturbed answers"):
        run_attack("probe", ctx)


def test_an_exactly_unlearned_lm_s_probes_find_what_the_never_learned_control_s_do(
    exactly_unlearned: AuditContext,
) -> None:
    outcome = run_attack("probe", exactly_unlearned)
    judgement = judge("probe", outcome, Thresholds(), seed=0)
    for variant, result in zip(outcome.variants, judgement.variants, strict=True):
        assert variant.control_before == outcome.after_forgetting and variant.control_after == variant.after_attack
        assert result.recovery is None or result.excess_recovery == 0.0
    assert judgement.verdict in ("robust", "inconclusive") and judgement.reason != "no_control"


def test_probe_leaves_its_scores_for_the_attacks_that_compare_against_them(forgotten_context: AuditContext) -> None:
    """The probe's passes score both forget splits under every reference LM: the other attacks read those scores
    (`reference_score`) instead of scoring again, and they are what scoring again gives."""
    ctx = dataclasses.replace(forgotten_context, control=never_learned(forgotten_context.before))
    splits = {"forget_train": ctx.forget_train, "forget_heldout": ctx.forget_heldout}
    # An audit context of its own (an empty cache), to score each split under each LM the ordinary way.
    expected = {
        (split, lm): dataclasses.replace(ctx).reference_score(rows, lm)
        for split, rows in splits.items()
        for lm in ("before", "forgotten", "control")
    }
    assert expected[("forget_train", "before")] != expected[("forget_train", "forgotten")]
    # On ctx itself (run_attack would run it on a copy, whose cache is its own).
    attack_implementation("probe")(ctx, ProbeParams())

    def no_scoring(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a reference score was computed again")

    ctx.score = no_scoring  # type: ignore[method-assign]
    for (split, lm), scores in expected.items():
        assert ctx.reference_score(splits[split], lm).rows == scores.rows, (split, lm)
