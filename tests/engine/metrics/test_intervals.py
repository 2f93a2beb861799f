"""Intervals against values computed independently (by hand, or by simulation), and the bootstrap's seeding."""

import math
from collections.abc import Callable

import numpy as np
import pytest

from worker.engine.metrics.intervals import (
    bonferroni_confidence,
    bootstrap_mean,
    paired_bootstrap,
    proportion,
    stratified_bootstrap,
    wilson,
)


def test_wilson_matches_the_closed_form_by_hand() -> None:
    # 8 of 10 at 95%: z = 1.959964; centre = (0.8 + z²/20) / (1 + z²/10); half = z/(1+z²/10)·sqrt(0.016 + z²/400).
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    low, high = wilson(8, 10)
    assert low == pytest.approx(centre - half, abs=1e-9)
    assert high == pytest.approx(centre + half, abs=1e-9)
    # Published value (Newcombe 1998, table I: 81/263 → 0.2553–0.3662).
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-4)


def test_wilson_is_inside_zero_one_at_the_extremes_and_narrows_with_rows() -> None:
    low, high = wilson(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2
    low, high = wilson(20, 20)
    assert high == 1.0 and 0.8 < low < 0.9
    assert np.diff(wilson(50, 100))[0] < np.diff(wilson(5, 10))[0]


def test_proportion_refuses_what_is_not_a_proportion() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        proportion([0.5, 1.0])
    with pytest.raises(ValueError, match="no rows"):
        proportion([])
    estimate = proportion([1, 1, 0, 1])
    assert (estimate.value, estimate.n, estimate.method) == (0.75, 4, "wilson")


def test_bootstrap_mean_is_seeded_and_covers_the_mean_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=40).tolist()
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)
    # Coverage by simulation: the interval of 40 N(0, 1) draws holds the true mean 0 in about 95% of samples.
    covered = 0
    for trial in range(200):
        sample = rng.normal(size=40)
        estimate = bootstrap_mean(sample.tolist(), seed=trial, resamples=500)
        assert estimate.ci_low is not None and estimate.ci_high is not None
        covered += estimate.ci_low <= 0 <= estimate.ci_high
    assert 0.88 <= covered / 200 <= 0.99


def test_one_row_has_no_interval() -> None:
    estimate = bootstrap_mean([0.3], seed=0)
    assert (estimate.value, estimate.n, estimate.ci_low, estimate.ci_high) == (0.3, 1, None, None)


def test_paired_bootstrap_is_narrower_than_unpaired_for_correlated_rows() -> None:
    rng = np.random.default_rng(0)
    before = rng.normal(size=60)
    after = before - 0.5 + rng.normal(scale=0.1, size=60)  # the same rows, shifted: strongly correlated

    def difference(means: np.ndarray) -> np.ndarray:
        return means[0] - means[1]

    paired = paired_bootstrap([before.tolist(), after.tolist()], difference, seed=0)
    assert paired.value == pytest.approx(before.mean() - after.mean())
    assert paired.ci_low is not None and paired.ci_high is not None
    assert paired.ci_low < 0.5 < paired.ci_high
    # Unpaired: each mean resampled on its own; the difference's spread is that of two independent means.
    unpaired_width = 2 * 1.96 * math.sqrt(before.var(ddof=1) / 60 + after.var(ddof=1) / 60)
    assert paired.ci_high - paired.ci_low < unpaired_width / 3


def test_paired_bootstrap_drops_undefined_resamples_and_gives_up_when_too_many() -> None:
    def ratio(means: np.ndarray) -> np.ndarray:
        headroom = means[0] - 0.5
        return np.where(headroom > 0, (means[0] - means[1]) / np.where(headroom > 0, headroom, 1), np.nan)

    clear = paired_bootstrap([[1.0] * 30, [0.5] * 15 + [1.0] * 15], ratio, seed=0)
    assert clear.value == pytest.approx(0.5) and clear.ci_low is not None
    # Accuracy before at chance: the ratio is undefined in about half the resamples.
    murky = paired_bootstrap([[1.0] * 15 + [0.0] * 15, [0.0] * 30], ratio, seed=0)
    assert (murky.ci_low, murky.ci_high) == (None, None)


def test_stratified_bootstrap_resamples_each_stratum_apart_and_covers_a_difference_of_means() -> None:
    sizes: set[tuple[int, int]] = set()

    def difference_of(a: np.ndarray, b: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
            sizes.add((first.shape[-1], second.shape[-1]))
            return a[first].mean(axis=-1) - b[second].mean(axis=-1)

        return difference

    rng = np.random.default_rng(5)
    covered = 0
    for trial in range(100):
        a, b = rng.normal(1.0, 1, 12), rng.normal(0.0, 2, 30)
        estimate = stratified_bootstrap([12, 30], difference_of(a, b), seed=trial, resamples=500)
        assert estimate.value == pytest.approx(a.mean() - b.mean()) and estimate.n == 42
        assert estimate.method == "bootstrap" and estimate.ci_low is not None and estimate.ci_high is not None
        covered += estimate.ci_low <= 1.0 <= estimate.ci_high
    assert sizes == {(12, 30)}  # every resample keeps each stratum's size
    assert 0.88 <= covered / 100 <= 0.99

    def count(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return np.full(len(first), float(first.shape[-1] + second.shape[-1]))

    single = stratified_bootstrap([1, 2], count, seed=0)
    assert (single.value, single.ci_low, single.ci_high, single.n) == (3.0, None, None, 3)
    assert stratified_bootstrap([2, 2], count, seed=0, paired=True).method == "paired_bootstrap"
    with pytest.raises(ValueError):
        stratified_bootstrap([0, 2], count, seed=0)


def test_bonferroni_confidence() -> None:
    assert bonferroni_confidence(1) == pytest.approx(0.95)
    assert bonferroni_confidence(5) == pytest.approx(0.99)
    with pytest.raises(ValueError):
        bonferroni_confidence(0)
