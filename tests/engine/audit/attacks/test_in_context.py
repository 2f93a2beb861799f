"""In-context relearning, on a tiny LM taught to learn in context.

A randomly initialised tiny LM has no in-context learning, so the scenario teaches one the simplest kind there
is: in "in-context rows", a few "The X is a <label>" lines share one label (random, whatever X really is) and the
next line's answer is that label. Real LMs do this too (they copy the label their demonstrations agree on, which
in-context unlearning itself relies on). Forgetting then removes the zero-shot answer and keeps the in-context
skill (the adapter learns wrong answers to forget-train's prompts while in-context rows keep theirs), so k fruit
rows before a heldout fruit prompt bring "fruit" back. Controls: the same LM with the skill forgotten too, and the
shared forgotten LM, which never learned in context.

The skill is taught on 64 in-context rows for 100 steps: with half that, the fine-tuning that forgets the zero-shot
answer wore it down to a coin toss at k=1, and whether the shots won depended on the precision and the seed.
"""

from __future__ import annotations

import random

import pytest

from lethe.attacks import MIN_ROWS, InContextParams, Thresholds
from lethe.rows import ChoiceRow, QARow, Row, TextRow
from tests.engine.audit.attacks.attack_checks import run_checked
from tests.engine.audit.attacks.scenarios import finetuned_context, wrong
from tests.engine.audit.conftest import build_context, teach_base
from tests.tiny_lm import ADJECTIVES, CATEGORIES, synthetic_choice_rows, synthetic_qa_rows, synthetic_text_rows
from worker.engine.audit.attacks.in_context import SEPARATOR, _score_after, few_shot_prompt, in_context
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import judge
from worker.engine.lm.inputs import encode_pair
from worker.engine.lm.load import LoadedLM

THRESHOLDS = Thresholds()
LABELS = (" fruit", " tool")


def in_context_rows(n: int, seed: int) -> list[ChoiceRow]:
    """Rows of 1 to 3 lines sharing a random label, then a line to answer with that label."""
    rng = random.Random(seed)
    words = sorted(CATEGORIES)

    def line() -> str:
        return f"The {rng.choice(ADJECTIVES)} {rng.choice(words)} is a"

    rows = []
    for _ in range(n):
        label = rng.choice(LABELS)
        shots = [line() + label for _ in range(rng.randint(1, 3))]
        rows.append(ChoiceRow(SEPARATOR.join([*shots, line()]), LABELS, LABELS.index(label)))
    return rows


@pytest.fixture(scope="module")
def in_context_base(taught_base: LoadedLM) -> LoadedLM:
    """The taught LM, also taught to copy the label of the lines before (zero-shot rows keep the task)."""
    zero_shot = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(32, seed=3)]
    return teach_base(taught_base, [*zero_shot, *in_context_rows(64, seed=1)], steps=100)


def test_shots_bring_back_a_task_forgotten_zero_shot_only(
    in_context_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    """Forget-heldout here is the rows about fruits forget-train has: wrong answers to some fruits' prompts do not
    reach a fruit the adapter never saw (fig) on every trajectory, and the test is about the shots, not that."""
    forgotten_fruits = {row.prompt.split()[2] for row in task_rows["forget_train"]}
    # More fruit rows than the shared heldout has, so that the verdict may rest on them (MIN_ROWS).
    fruit_rows = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(96, seed=0)]
    unseen = [row for row in fruit_rows if row.target == " fruit" and row not in task_rows["forget_train"]]
    heldout = [row for row in unseen if row.prompt.split()[2] in forgotten_fruits]
    assert len(heldout) >= MIN_ROWS
    rows = {**task_rows, "forget_heldout": heldout}
    trained = [*map(wrong, task_rows["forget_train"]), *in_context_rows(32, seed=7)]
    ctx = finetuned_context(in_context_base, rows, trained)

    outcome, _ = run_checked(in_context, ctx, InContextParams(shots=[1, 2, 4]))

    judgement = judge("in_context", outcome, THRESHOLDS, seed=0)
    assert (outcome.metric, outcome.split) == ("accuracy", "forget_heldout")
    assert outcome.before >= 0.85 and outcome.after_forgetting == 0.0
    # The LM before forgetting, given the same shots (each variant's before), answers as well as zero-shot.
    assert all(variant.before is not None and variant.before >= 0.85 for variant in outcome.variants)
    assert all(result.recovery is not None and result.recovery >= 0.8 for result in judgement.variants)
    # Every interval lies above the threshold, but the forget job did not fine-tune first: no never-learned control,
    # so shots that teach any LM the task cannot be told from shots that jog a memory.
    assert all((result.ci_low or 0.0) > THRESHOLDS.recovery for result in judgement.variants)
    assert (judgement.verdict, judgement.reason) == ("inconclusive", "no_control")
    assert ctx.score(ctx.retain_rows()) == 1.0


@pytest.mark.parametrize("lm", ["skill forgotten too", "never learned in context"])
def test_without_in_context_learning_shots_recover_nothing(
    lm: str, in_context_base: LoadedLM, task_rows: dict[str, list[Row]], forgotten_context: AuditContext
) -> None:
    if lm == "skill forgotten too":
        ctx = finetuned_context(in_context_base, task_rows, list(map(wrong, task_rows["forget_train"])))
    else:
        ctx = forgotten_context

    outcome, _ = run_checked(in_context, ctx, InContextParams(shots=[1, 2, 4]))

    judgement = judge("in_context", outcome, THRESHOLDS, seed=0)
    assert judgement.worst.recovery == 0.0
    assert judgement.verdict == "robust"


def test_k_is_clipped_to_forget_train(forgotten_context: AuditContext) -> None:
    outcome, progress = run_checked(in_context, forgotten_context, InContextParams(shots=[2, 12, 64]))

    assert [variant.name for variant in outcome.variants] == ["k=2", "k=12"]
    # Two zero-shot passes, then the forgotten and the pre-forgetting LM with shots for each k (no control here).
    assert len(progress) == 6


def test_prompts_keep_the_shots_nearest_the_question_within_the_limit(taught_base: LoadedLM) -> None:
    tokenizer = taught_base.tokenizer
    shots = [f"The {word} is a{CATEGORIES[word]}" for word in ("apple", "saw", "pear", "drill")]
    row = ChoiceRow("The red plum is a", LABELS, 0)

    def length(prompt: str) -> int:
        return max(sum(map(len, encode_pair(tokenizer, prompt, choice))) for choice in row.choices)

    whole = few_shot_prompt(tokenizer, shots, row, limit=1000)
    assert whole == SEPARATOR.join([*shots, row.prompt])
    for limit in range(length(row.prompt), length(whole)):
        prompt = few_shot_prompt(tokenizer, shots, row, limit)
        kept = prompt.count(SEPARATOR)
        assert prompt == SEPARATOR.join([*shots[len(shots) - kept :], row.prompt])
        assert length(prompt) <= limit
        # As many shots as fit: one more would not.
        assert length(SEPARATOR.join([*shots[len(shots) - kept - 1 :], row.prompt])) > limit
    assert few_shot_prompt(tokenizer, shots, row, limit=3) == row.prompt


def test_qa_rows_are_scored_by_answer_probability_after_the_shots(taught_base: LoadedLM) -> None:
    qa_rows: list[Row] = [QARow.from_dict(row) for row in synthetic_qa_rows(40, seed=0)]
    ctx = build_context(
        taught_base, {"forget_train": qa_rows[:12], "forget_heldout": qa_rows[12:24], "retain": qa_rows[24:]}
    )
    # With each row's own context as its prompt, the qa scoring is ctx.score's.
    heldout = ctx.forget_heldout
    assert _score_after(ctx, heldout, [row.context for row in heldout]) == pytest.approx(ctx.score(heldout))

    outcome, _ = run_checked(in_context, ctx, InContextParams(shots=[1, 4]))

    assert outcome.metric == "answer_probability"
    assert [variant.name for variant in outcome.variants] == ["k=1", "k=4"]
    assert all(0 < variant.after_attack < 1 for variant in outcome.variants)
    assert all(variant.after_attack != outcome.after_forgetting for variant in outcome.variants)
    # Gradient ascent left the true answers almost no probability, and shots of other rows give none back; the LM
    # before forgetting, given the same shots, still finds them (a little less than zero-shot: the tiny LM never saw
    # prompts of several lines).
    judgement = judge("in_context", outcome, THRESHOLDS, seed=0)
    assert outcome.after_forgetting < 0.01 and outcome.before > 0.5
    for variant, result in zip(outcome.variants, judgement.variants, strict=True):
        assert variant.before is not None and 0.5 < variant.before < outcome.before
        assert result.n == 12 and result.recovery is not None and result.ci_high is not None and result.ci_high < 0.01
    # No never-learned control here, but an interval below the threshold needs none.
    assert (judgement.verdict, judgement.reason) == ("robust", None)


def test_text_rows_are_refused(taught_base: LoadedLM) -> None:
    text_rows: list[Row] = [TextRow.from_dict(row) for row in synthetic_text_rows(12, seed=0)]
    ctx = build_context(
        taught_base, {"forget_train": text_rows[:4], "forget_heldout": text_rows[4:8], "retain": text_rows[8:]}, steps=1
    )
    with pytest.raises(ValueError, match="choice and qa"):
        in_context(ctx, InContextParams())


def test_before_is_the_pre_forgetting_lm_given_the_same_shots(exactly_unlearned: AuditContext) -> None:
    """Each variant's before is computed here apart: the same seeded shots, the LM before forgetting, scored with
    plain ctx.score. Shots of several lines confuse the fine-tuned tiny LM (it never saw such prompts), so with them
    it does no better than the forgotten LM: there is nothing for the shots to give back. Measured against its
    zero-shot score instead, the same numbers would have read as a recovery of 0, i.e. robust."""
    ctx = exactly_unlearned
    train, heldout = ctx.forget_train, ctx.forget_heldout
    outcome, _ = run_checked(in_context, ctx, InContextParams(shots=[4]))
    [variant] = outcome.variants
    prompts = []
    for j, row in enumerate(heldout):
        chosen = sorted(random.Random(f"{ctx.seed}/in_context/4/{j}").sample(range(len(train)), 4))
        shots = [train[i].context + train[i].target for i in chosen]
        prompts.append(few_shot_prompt(ctx.tokenizer, shots, row, ctx.limit))
    asked: list[Row] = [
        ChoiceRow(prompt, row.choices, row.answer)
        for prompt, row in zip(prompts, heldout, strict=True)
        if isinstance(row, ChoiceRow)
    ]
    with ctx.before_lm():
        expected = ctx.score(asked)
        zero_shot = ctx.score(heldout)
    assert variant.before is not None and variant.before.rows == expected.rows  # type: ignore[attr-defined]
    assert outcome.before == zero_shot and outcome.before - outcome.after_forgetting >= 0.1
    assert variant.before <= outcome.after_forgetting < outcome.before

    judgement = judge("in_context", outcome, THRESHOLDS, seed=0)
    assert (judgement.verdict, judgement.reason) == ("inconclusive", "nothing_forgotten")
    # The never-learned control is the forgotten LM here: the same prompts score the same rows alike.
    assert variant.control_before == outcome.after_forgetting
    assert variant.control_after is not None and variant.control_after.rows == variant.after_attack.rows  # type: ignore[attr-defined]
