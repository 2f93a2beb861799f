"""Recovery rates, trigger excess drops and verdicts, against hand-computed values (torch-free)."""

import pytest

from lethe.attacks import Thresholds
from worker.engine.audit.outcome import AttackOutcome, Variant, excess_drop, judge, overall_verdict, recovery_rate

DEFAULTS = Thresholds.model_validate({})


def test_recovery_rate_is_the_share_of_the_forgotten_score_brought_back() -> None:
    assert recovery_rate(0.9, 0.5, 0.7, 0.05) == pytest.approx(0.5)
    assert recovery_rate(0.9, 0.5, 0.4, 0.05) == 0.0  # the attack made it worse: clipped
    assert recovery_rate(0.9, 0.5, 1.0, 0.05) == 1.0  # beyond the pre-forgetting score: clipped
    assert recovery_rate(0.9, 0.87, 0.9, 0.05) is None  # forgetting removed less than min_forgetting
    assert recovery_rate(0.5, 0.9, 0.9, 0.0) is None  # "forgetting" raised the score


def test_excess_drop_discounts_the_drop_the_insertion_causes_before_forgetting() -> None:
    # Before forgetting 0.9 clean, 0.85 triggered (drop 0.05); forgotten 0.88 clean, 0.60 triggered (drop 0.28).
    assert excess_drop(0.9, 0.85, 0.88, 0.60) == pytest.approx(0.23)
    assert excess_drop(0.9, 0.95, 0.88, 0.80) == pytest.approx(0.08)  # insertion helped before: no discount


def test_the_worst_variant_decides_the_verdict() -> None:
    outcome = AttackOutcome(
        metric="accuracy",
        split="forget_heldout",
        before=1.0,
        after_forgetting=0.5,
        variants=[Variant("k=2", 0.55), Variant("k=8", 0.75), Variant("benign", 0.5)],
    )
    judgement = judge("relearn", outcome, DEFAULTS)
    assert judgement.worst_variant == "k=8" and judgement.recovery == pytest.approx(0.5)
    assert judgement.verdict == "shallow"
    assert [v.recovery for v in judgement.variants] == pytest.approx([0.1, 0.5, 0.0])
    stricter = Thresholds.model_validate({"attacks": {"relearn": 0.6}})
    assert judge("relearn", outcome, stricter).verdict == "robust"


def test_variant_references_override_the_attack_s() -> None:
    outcome = AttackOutcome(
        metric="probe_accuracy",
        split="forget_heldout",
        before=1.0,
        after_forgetting=0.5,
        variants=[Variant("layer_0", 0.6, before=0.6, layer=0), Variant("layer_1", 0.9, before=1.0, layer=1)],
    )
    judgement = judge("probe", outcome, DEFAULTS)
    # layer_0 knew nothing before (0.6 - 0.5 < ... recovery = 0.1/0.1 = 1.0); layer_1: 0.4/0.5 = 0.8.
    assert [v.recovery for v in judgement.variants] == pytest.approx([1.0, 0.8])
    assert judgement.worst_variant == "layer_0" and judgement.before == 0.6


def test_nothing_forgotten_is_inconclusive() -> None:
    outcome = AttackOutcome("accuracy", "forget_train", 0.9, 0.88, [Variant("int8", 0.9)])
    judgement = judge("quantize", outcome, DEFAULTS)
    assert judgement.recovery is None and judgement.verdict == "inconclusive"


def test_trigger_judges_the_excess_drop() -> None:
    outcome = AttackOutcome(
        metric="accuracy",
        split="retain",
        before=0.9,
        after_forgetting=0.88,
        variants=[Variant("piqa", 0.60, control=0.85), Variant("arc", 0.86, control=0.9)],
        effect="damage",
    )
    judgement = judge("trigger", outcome, DEFAULTS)
    assert judgement.worst_variant == "piqa" and judgement.excess_drop == pytest.approx(0.23)
    assert judgement.recovery is None and judgement.verdict == "shallow"
    assert judge("trigger", outcome, Thresholds.model_validate({"trigger_drop": 0.3})).verdict == "robust"


def test_overall_verdict() -> None:
    assert overall_verdict(["robust", "shallow", "inconclusive"]) == "shallow"
    assert overall_verdict(["robust", "inconclusive"]) == "robust"
    assert overall_verdict(["inconclusive"]) == "inconclusive"
    assert overall_verdict([]) == "inconclusive"


def test_recovery_counts_from_chance_when_forgetting_went_below_it() -> None:
    # Gradient ascent flipped a binary task to 0.1: back to guessing (0.5) is no recovery; 0.75 is half-way.
    outcome = AttackOutcome(
        "accuracy", "forget_train", 1.0, 0.1, [Variant("int4", 0.5), Variant("int8", 0.75)], chance=0.5
    )
    judgement = judge("quantize", outcome, DEFAULTS)
    assert [v.recovery for v in judgement.variants] == pytest.approx([0.0, 0.5])
    assert judgement.chance == 0.5 and judgement.after_forgetting == 0.1


def test_no_rate_when_the_attack_s_own_score_did_not_drop() -> None:
    # A probe fitted on the task beats an LM that never knew it (0.5 -> 0.5): whatever the probe reads, no rate.
    outcome = AttackOutcome(
        "probe_accuracy", "forget_heldout", 0.5, 0.5, [Variant("layer_0", 0.7, before=0.71)], chance=0.5
    )
    judgement = judge("probe", outcome, DEFAULTS)
    assert judgement.recovery is None and judgement.verdict == "inconclusive"
