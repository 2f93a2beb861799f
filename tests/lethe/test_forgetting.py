"""The outcome of forgetting: which splits rose, and the words the API, the model card and the report all use."""

import pytest

from lethe.forgetting import Forgetting, ScoreRise, score_rises


def test_a_score_rose_only_when_its_interval_lies_wholly_above_the_score_before() -> None:
    before = {"forget_train": 0.84, "forget_heldout": 0.64, "no_interval": 0.1}
    after = {
        "forget_train": (0.76, 0.63, 0.86),  # fell
        "forget_heldout": (0.80, 0.66, 0.89),  # rose: 0.66 > 0.64
        "no_interval": (0.9, None, None),  # no interval: no claim
    }
    assert score_rises(before, after) == (ScoreRise("forget_heldout", 0.64, 0.80, 0.66, 0.89),)
    # An interval that reaches down to the score before is not a rise.
    assert score_rises({"forget_heldout": 0.66}, {"forget_heldout": (0.80, 0.66, 0.89)}) == ()


def test_the_summary_says_when_the_target_was_missed_and_what_rose() -> None:
    # The case: random_label with default params, 20 steps, forget-train far from chance, heldout up.
    forgetting = Forgetting(
        metric="accuracy",
        target=0.55,
        score=0.76,
        target_reached=False,
        stop_reason="max_steps",
        steps=20,
        rose=(ScoreRise("forget_heldout", 0.64, 0.80, 0.66, 0.89),),
    )
    summary = forgetting.summary()
    assert summary.startswith("Forgetting did NOT reach its target: forget_train accuracy is 0.760 after 20 steps")
    assert "above the target 0.550" in summary and "the step budget (max_steps) ran out" in summary
    assert "forget_heldout accuracy ROSE during forgetting: 0.640 before, 0.800 after" in summary
    assert Forgetting.from_dict(forgetting.as_dict()) == forgetting


def test_a_reached_target_says_so_without_alarm() -> None:
    forgetting = Forgetting("accuracy", 0.6, 0.5, True, "target", 1)
    summary = forgetting.summary()
    assert summary == (
        "Forgetting reached its target: forget_train accuracy is 0.500 after 1 step, at or below the target 0.600 "
        "(it stopped because it reached the target)."
    )
    assert "NOT" not in summary and "ROSE" not in summary


def test_an_unknown_stop_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stop reason"):
        Forgetting("accuracy", 0.6, 0.5, True, "tired", 1)
