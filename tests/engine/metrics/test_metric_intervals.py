"""The intervals a job's metrics carry: checked against independent computations (scipy's Wilson interval, an
unpaired bootstrap written here), not against intervals.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from tests.engine.metrics.conftest import scores_of
from worker.engine.metrics.choice import choice_result, forget_ratio
from worker.engine.metrics.choice_scores import ChoiceScores
from worker.engine.metrics.evaluate import perplexity_estimate
from worker.engine.metrics.text import perplexity


def _scores(correct: list[bool], choices: list[int]) -> ChoiceScores:
    """Choice scores whose prediction is choice 0, the answer 0 where `correct` and 1 otherwise."""
    loglikelihoods = [[0.0] + [-1.0 - i for i in range(k - 1)] for k in choices]
    return ChoiceScores(loglikelihoods, [0 if c else 1 for c in correct])


def _wilson(successes: int, n: int) -> tuple[float, float]:
    interval = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def test_accuracy_carries_wilsons_interval_and_forget_gap_the_same_shifted_by_chance() -> None:
    correct = [True] * 17 + [False] * 13
    result = choice_result(_scores(correct, [4] * 30), seed=3)
    accuracy, gap = result.estimates["accuracy"], result.estimates["forget_gap"]
    low, high = _wilson(17, 30)
    assert (accuracy.value, accuracy.n, accuracy.method) == (17 / 30, 30, "wilson")
    assert accuracy.ci_low == pytest.approx(low, abs=1e-12) and accuracy.ci_high == pytest.approx(high, abs=1e-12)
    assert gap.value == pytest.approx(17 / 30 - 0.25)
    assert gap.ci_low == pytest.approx(low - 0.25, abs=1e-12) and gap.ci_high == pytest.approx(high - 0.25, abs=1e-12)


def test_forget_gap_with_rows_of_different_chance_is_a_bootstrap_around_the_mean_gap() -> None:
    correct = [True, False] * 20
    choices = [2, 4] * 20  # the correct rows have 2 choices (chance 1/2), the wrong ones 4 (chance 1/4)
    gap = choice_result(_scores(correct, choices), seed=0).estimates["forget_gap"]
    assert gap.method == "bootstrap" and gap.n == 40
    assert gap.value == pytest.approx(0.5 - (0.5 + 0.25) / 2)
    assert gap.ci_low is not None and gap.ci_high is not None
    assert gap.ci_low < gap.value < gap.ci_high


def test_correct_probability_carries_a_seeded_bootstrap_interval() -> None:
    scores = _scores([True, False, True, True, False, True, True, False], [2, 3, 2, 4, 2, 3, 2, 2])
    first = choice_result(scores, seed=1).estimates["correct_probability"]
    assert first == choice_result(scores, seed=1).estimates["correct_probability"]
    assert first != choice_result(scores, seed=2).estimates["correct_probability"]
    assert first.ci_low is not None and first.ci_high is not None and first.ci_low < first.value < first.ci_high


def _correlated_rows(n: int, seed: int) -> tuple[list[float], list[float]]:
    """Rows known before forgetting (80%), of which forgetting removes a fifth: after <= before, row by row."""
    rng = np.random.default_rng(seed)
    before = (rng.random(n) < 0.8).astype(float)
    after = before * (rng.random(n) < 0.8)
    return before.tolist(), after.tolist()


def _unpaired_width(before: list[float], after: list[float], chance: float, seed: int) -> float:
    """The 95% percentile width of the forget ratio when before and after are resampled independently."""
    rng = np.random.default_rng(seed)
    b, a = np.asarray(before), np.asarray(after)
    resamples = 2000
    mean_before = b[rng.integers(0, b.size, (resamples, b.size))].mean(axis=1)
    mean_after = a[rng.integers(0, a.size, (resamples, a.size))].mean(axis=1)
    ratios = (mean_before - mean_after) / (mean_before - chance)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(high - low)


def test_forget_ratio_is_paired_narrower_than_unpaired_and_contains_its_value() -> None:
    before, after = _correlated_rows(200, seed=0)
    chance = 0.25
    ratio = forget_ratio(before, after, chance, seed=0)
    expected = (np.mean(before) - np.mean(after)) / (np.mean(before) - chance)
    assert ratio.value == pytest.approx(expected) and ratio.n == 200 and ratio.method == "paired_bootstrap"
    assert ratio.ci_low is not None and ratio.ci_high is not None
    assert ratio.ci_low < ratio.value < ratio.ci_high
    # Rows known before and forgotten after move together; resampling them jointly keeps that: a narrower interval.
    assert ratio.ci_high - ratio.ci_low < 0.8 * _unpaired_width(before, after, chance, seed=1)


def test_forget_ratio_has_no_interval_when_resamples_are_often_not_above_chance() -> None:
    # Accuracy before barely above chance: many resamples have no headroom, so no ratio (and no interval).
    before = [1.0] * 11 + [0.0] * 9
    after = [0.0] * 20
    ratio = forget_ratio(before, after, 0.5, seed=0)
    assert ratio.value == pytest.approx((0.55 - 0) / (0.55 - 0.5))  # after below chance: more than 1
    assert ratio.ci_low is None and ratio.ci_high is None


def test_perplexity_interval_bootstraps_the_token_weighted_ratio() -> None:
    # Every token has probability e^-1, passages of 1 to 10 tokens: any resample's total NLL / total tokens is 1,
    # so a token-weighted interval collapses to e (a mean of per-passage values, or of NLL alone, would not).
    same_rate = [scores_of([math.exp(-1.0)] * k) for k in range(1, 11)]
    estimate = perplexity_estimate(same_rate, seed=0)
    assert estimate.value == pytest.approx(math.e) and estimate.n == 10
    assert estimate.ci_low == pytest.approx(math.e) and estimate.ci_high == pytest.approx(math.e)

    # A long confident passage and short uncertain ones: the value is the token-weighted one, inside its interval.
    mixed = [scores_of([0.9] * 40), *(scores_of([0.1] * 2) for _ in range(9))]
    estimate = perplexity_estimate(mixed, seed=0)
    assert estimate.value == pytest.approx(perplexity(mixed))
    assert estimate.value < np.mean([perplexity([s]) for s in mixed])  # token-weighted, not a mean of passages
    assert estimate.ci_low is not None and estimate.ci_high is not None
    assert estimate.ci_low < estimate.value < estimate.ci_high
