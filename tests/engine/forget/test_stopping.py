"""random_label's stopping rules: the shared target, the paper's forget-heldout-below-chance rule, a fixed budget.

Unit tests feed `StopRule` scores by hand; the runs on the taught tiny LM check that each rule ends a real run when
it should, with its stop_reason, by replaying the same seeded run one step shorter.
"""

import copy

import pytest

from lethe.methods import METHODS
from lethe.rows import ChoiceRow, chance
from lethe.specs import FinetuneSpec
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget.run import ForgetOutcome, ForgetPlan, run_forget
from worker.engine.forget.splits import FORGET_HELDOUT, FORGET_TRAIN, Splits
from worker.engine.forget.stopping import StopRule
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora

ROWS = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(96, seed=0)]
# Random labels drive the tiny LM to answer one category whatever the row: on a balanced heldout set that sits at
# exactly chance (0.5), never below it. A heldout set of one category falls well below chance instead (to 0 when
# the LM settles on the other one), which the paper's rule must catch at its first evaluation.
FORGET_TRAIN_ROWS = ROWS[:32]
FORGET_HELDOUT_ROWS = [row for row in ROWS[32:] if row.target == " fruit"][:16]
RETAIN = "retain:more"
RETAIN_ROWS = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(8, seed=99)]
FINETUNE = FinetuneSpec(epochs=10, learning_rate=1e-2)
CHANCE = 0.5  # two choices per row


def stop_rule(tiny_base: LoadedLM, **params) -> StopRule:
    splits = Splits(FORGET_TRAIN_ROWS, FORGET_HELDOUT_ROWS, {"more": RETAIN_ROWS}, [])
    before = {FORGET_TRAIN: 0.95, FORGET_HELDOUT: 0.9, RETAIN: 0.9}
    parsed = METHODS.get("random_label").parse(params)
    return StopRule(parsed, splits, before, attach_lora(copy.deepcopy(tiny_base.lm), 2, 4))


def scores(forget_train: float, forget_heldout: float) -> dict[str, float]:
    return {FORGET_TRAIN: forget_train, FORGET_HELDOUT: forget_heldout, RETAIN: 0.9}


def test_each_rule_stops_on_its_own_split_only(tiny_base: LoadedLM) -> None:
    assert chance(FORGET_HELDOUT_ROWS) == CHANCE
    assert len(FORGET_TRAIN_ROWS) == 32
    target = stop_rule(tiny_base, target_tolerance=0.05)
    assert target(scores(0.56, 0.2)) is None  # heldout below chance does not end a target run
    assert target(scores(0.55, 0.9)) == "target"

    heldout = stop_rule(tiny_base, stopping="heldout_below_chance")
    assert heldout(scores(0.1, 0.5)) is None  # forget-train at 0.1 does not end it, and 0.5 is not below chance
    assert heldout(scores(0.9, 0.49)) == "heldout_below_chance"

    budget = stop_rule(tiny_base, stopping="budget", max_steps=10)
    assert budget(scores(0.0, 0.0)) is None  # nothing ends a budget early

    off = stop_rule(tiny_base, stop_at_target=False)
    assert off(scores(0.0, 0.0)) is None  # the shared switch still turns the target rule off


def run(tiny_base: LoadedLM, **params) -> ForgetOutcome:
    params = {"learning_rate": 3e-3, "batch_size": 16, "evaluate_every": 1, "target_tolerance": 0.05} | params
    plan = ForgetPlan(method="random_label", method_params=params, finetune=FINETUNE, probe=False, seed=0)
    return run_forget(
        tiny_base, plan, FORGET_TRAIN_ROWS, FORGET_HELDOUT_ROWS, {"more": RETAIN_ROWS}, lambda stage, done: None
    )


def final(outcome: ForgetOutcome, split: str) -> float:
    [value] = [
        m.value
        for m in outcome.metrics
        if (m.stage, m.split, m.name, m.layer) == ("forgotten", split, "accuracy", None)
    ]
    return value


def finetuned(outcome: ForgetOutcome, split: str) -> float:
    [value] = [m.value for m in outcome.metrics if (m.stage, m.split, m.name) == ("finetuned", split, "accuracy")]
    return value


def test_the_paper_s_rule_stops_at_the_first_evaluation_with_forget_heldout_below_chance(tiny_base: LoadedLM) -> None:
    outcome = run(tiny_base, stopping="heldout_below_chance", epochs=40)
    assert outcome.forgetting.stop_reason == "heldout_below_chance"
    assert finetuned(outcome, FORGET_HELDOUT) >= 0.7  # the taught LM knew the heldout rows
    assert final(outcome, FORGET_HELDOUT) < CHANCE
    # The same seeded run one step shorter (a budget) had not got there yet: the rule stopped at the first chance.
    shorter = run(tiny_base, stopping="budget", max_steps=outcome.forgetting.steps - 1, epochs=40)
    assert (shorter.forgetting.steps, shorter.forgetting.stop_reason) == (outcome.forgetting.steps - 1, "max_steps")
    assert final(shorter, FORGET_HELDOUT) >= CHANCE


def test_a_budget_trains_exactly_max_steps_even_past_the_target(tiny_base: LoadedLM) -> None:
    # The target rule with these params stops early; the budget ignores it.
    early = run(tiny_base, epochs=40, target_tolerance=0.3)
    assert early.forgetting.stop_reason == "target"
    budget = run(tiny_base, stopping="budget", max_steps=early.forgetting.steps + 5, epochs=40, target_tolerance=0.3)
    assert (budget.forgetting.steps, budget.forgetting.stop_reason) == (early.forgetting.steps + 5, "max_steps")
    # An epoch cap shorter than the budget ends it first, and says so.
    capped = run(tiny_base, stopping="budget", max_steps=1000, epochs=1)
    # 32 forget-train rows in batches of 16.
    assert (capped.forgetting.steps, capped.forgetting.stop_reason) == (2, "epochs")


def test_a_budget_needs_max_steps() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        METHODS.get("random_label").parse({"stopping": "budget"})
