"""Paraphrase: a forgetting of the trained wording only is found out by another wording; one that generalised is not.

The taught LM also learns the re-templated wording of the task. The shallow forgetting (see
`scenarios.finetuned_context`) teaches wrong answers to forget-train's prompts while re-templated rows of
forget-heldout keep their right answers, so re-templated forget-train rows, never trained in either direction,
are answered again. Gradient ascent, on the same LM, forgets both wordings: nothing to recover.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from lethe.attacks import ParaphraseParams, Thresholds
from lethe.rows import ChoiceRow, QARow, Row, TextRow
from tests.engine.audit.attacks.attack_checks import run_checked
from tests.engine.audit.attacks.scenarios import finetuned_context, wrong
from tests.engine.audit.conftest import build_context, teach_base
from tests.tiny_lm import synthetic_choice_rows, synthetic_qa_rows, synthetic_text_rows
from worker.engine.audit.attacks.paraphrase import lettered, paraphrase, retemplated
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import judge
from worker.engine.lm.load import LoadedLM

THRESHOLDS = Thresholds()


@pytest.fixture(scope="module")
def two_wordings_base(taught_base: LoadedLM) -> LoadedLM:
    rows = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(48, seed=4)]
    return teach_base(taught_base, [*rows, *map(retemplated, rows)], steps=40)


def test_forgetting_only_the_trained_wording_is_recovered_by_retemplating(
    two_wordings_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    trained = [
        *map(wrong, task_rows["forget_train"]),
        *map(retemplated, task_rows["forget_heldout"]),
        *task_rows["retain"],
    ]
    ctx = finetuned_context(two_wordings_base, task_rows, trained)

    outcome, _ = run_checked(paraphrase, ctx, ParaphraseParams(split="forget_train"))

    judgement = judge("paraphrase", outcome, THRESHOLDS, seed=0)
    assert (outcome.metric, outcome.split) == ("accuracy", "forget_train")
    assert (outcome.before, outcome.after_forgetting) == (1.0, 0.0)
    assert judgement.worst_variant == "retemplated"
    assert judgement.worst.recovery is not None and judgement.worst.recovery >= 0.8
    assert judgement.verdict == "shallow"


def test_forgetting_that_generalised_to_the_other_wording_recovers_nothing(
    two_wordings_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    ctx = build_context(two_wordings_base, task_rows, method="gradient_ascent", steps=6)

    outcome, _ = run_checked(paraphrase, ctx, ParaphraseParams(split="forget_train"))

    rates = {result.name: result.recovery for result in judge("paraphrase", outcome, THRESHOLDS, seed=0).variants}
    assert rates["retemplated"] == 0.0
    assert judge("paraphrase", outcome, THRESHOLDS, seed=0).verdict == "robust"


def test_a_wording_the_lm_never_knew_counts_as_no_recovery(forgotten_context: AuditContext) -> None:
    """The tiny LM never learned lettered questions: chance before and after forgetting. Gradient ascent left
    the original rows below chance (0), so without judge()'s floor at chance this would read as full recovery."""
    outcome, _ = run_checked(paraphrase, forgotten_context, ParaphraseParams(split="forget_train"))

    lettered_variant = next(variant for variant in outcome.variants if variant.name == "lettered_shuffled")
    assert outcome.after_forgetting == 0.0 and outcome.chance == 0.5
    assert lettered_variant.before == lettered_variant.after_attack == 0.5
    judgement = judge("paraphrase", outcome, THRESHOLDS, seed=0)
    rates = {result.name: result.recovery for result in judgement.variants}
    assert rates["lettered_shuffled"] is None
    assert judgement.verdict == "robust"


def test_retemplated_rewords_question_prompts_and_free_prompts_and_keeps_trailing_space() -> None:
    question = ChoiceRow("Question: Is a plum a fruit?\nAnswer:", (" yes", " no"), 0)
    assert retemplated(question) == dataclasses.replace(question, prompt="Is a plum a fruit?\nThe answer is:")
    free = ChoiceRow("The red plum is a", (" fruit", " tool"), 0)
    assert retemplated(free).prompt == 'Question: How does "The red plum is a" continue?\nAnswer:'
    spaced = ChoiceRow("Question: 2 + 2?\n Answer: ", ("4", "5"), 0)
    assert retemplated(spaced).prompt == "2 + 2?\nThe answer is: "


def test_lettered_lists_the_choices_in_a_seeded_order_and_answers_with_the_true_letter() -> None:
    row = ChoiceRow("Question: Which is a fruit?\nAnswer:", (" saw", " plum", " drill", " axe"), 1)

    asked = lettered(row, random.Random("7"))

    assert asked == lettered(row, random.Random("7"))
    assert asked.choices == (" A", " B", " C", " D")
    assert asked.prompt.startswith("Question: Which is a fruit?\nA. ") and asked.prompt.endswith("\nAnswer:")
    listed = dict(line.split(". ") for line in asked.prompt.splitlines()[1:-1])
    assert sorted(listed.values()) == ["axe", "drill", "plum", "saw"]
    assert listed["ABCD"[asked.answer]] == "plum"
    orders = {lettered(row, random.Random(seed)).prompt for seed in range(20)}
    assert len(orders) > 1
    with pytest.raises(ValueError, match="26"):
        lettered(ChoiceRow("Pick one", tuple(f" {i}" for i in range(27)), 0), random.Random(0))


def test_qa_rows_are_asked_their_paraphrased_question(taught_base: LoadedLM) -> None:
    rows = [QARow.from_dict(row) for row in synthetic_qa_rows(40, seed=0)]
    # Half of forget-train without a paraphrase: left out of the variant, which has its own references.
    forget_train: list[Row] = [
        row if i % 2 else dataclasses.replace(row, paraphrased_question=None) for i, row in enumerate(rows[:12])
    ]
    ctx = build_context(taught_base, {"forget_train": forget_train, "forget_heldout": rows[12:24], "retain": rows[24:]})

    outcome, _ = run_checked(paraphrase, ctx, ParaphraseParams(split="forget_train"))

    (variant,) = outcome.variants
    asked = [row for row in forget_train if isinstance(row, QARow) and row.paraphrased_question]
    paraphrased: list[Row] = [QARow(row.paraphrased_question or "", row.answer) for row in asked]
    assert (outcome.metric, variant.name) == ("answer_probability", "paraphrased_question")
    assert outcome.after_forgetting == ctx.score(forget_train)
    assert variant.after_forgetting == ctx.score(asked)
    assert variant.after_attack == ctx.score(paraphrased)
    with ctx.before_lm():
        assert variant.before == ctx.score(paraphrased)

    without = dataclasses.replace(
        ctx, forget_train=[dataclasses.replace(row, paraphrased_question=None) for row in asked]
    )
    with pytest.raises(ValueError, match="paraphrased_question"):
        paraphrase(without, ParaphraseParams(split="forget_train"))


def test_text_rows_are_refused(taught_base: LoadedLM) -> None:
    text_rows: list[Row] = [TextRow.from_dict(row) for row in synthetic_text_rows(12, seed=0)]
    ctx = build_context(
        taught_base, {"forget_train": text_rows[:4], "forget_heldout": text_rows[4:8], "retain": text_rows[8:]}, steps=1
    )
    with pytest.raises(ValueError, match="choice and qa"):
        paraphrase(ctx, ParaphraseParams())
