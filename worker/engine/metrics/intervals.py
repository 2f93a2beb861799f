"""95% intervals for every number Lethe reports: Wilson for accuracies, a seeded percentile bootstrap over rows for
the rest, paired (rows resampled jointly) where the same rows are scored more than once.

- `wilson(successes, n)`: the Wilson score interval of a proportion (Wilson 1927), which stays inside [0, 1] and is
  sane at 0 or n successes, unlike the normal approximation.
- `bootstrap_mean(values, seed)`: the percentile interval of the mean over `BOOTSTRAP_RESAMPLES` resamples of the
  rows with replacement (Efron & Tibshirani 1993, ch. 13).
- `paired_bootstrap(columns, statistic, seed)`: the same for any statistic of the columns' means, every resample
  drawing one set of row indices for all columns. A forget ratio compares the same rows before and after
  forgetting; a recovery rate the same rows before, after forgetting and after the attack: resampling them jointly
  keeps their correlation, which an interval from independent resamples would ignore (and overstate).
- `stratified_bootstrap(sizes, statistic, seed)`: any statistic of several groups of rows that are sampled apart
  (an MIA AUC's members and non-members), each group resampled on its own so every resample keeps the groups'
  sizes; the statistic gets the drawn row indices, so values of the same rows (two LMs' scores) are read at the
  same indices: paired, as above.

A resample whose statistic is undefined (NaN: e.g. a ratio whose denominator is not positive) is dropped; if more
than `MAX_UNDEFINED_FRACTION` of them are, the interval is None: the data do not pin the number down.

Multiplicity: an attack's verdict looks at its worst of m variants, so each variant's interval is drawn at the
Bonferroni level 1 − α/m (`bonferroni_confidence`): the chance that any of the m intervals misses its value stays
below α. Bonferroni rather than Holm because a verdict needs intervals, and Holm's step-down gives p-values only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import norm

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
MAX_UNDEFINED_FRACTION = 0.05

IntervalMethod = Literal["wilson", "bootstrap", "paired_bootstrap"]


@dataclass(frozen=True)
class Estimate:
    """A value with the rows it rests on and its interval (None where it cannot be drawn), and how it was drawn."""

    value: float
    n: int
    ci_low: float | None
    ci_high: float | None
    method: IntervalMethod


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def bonferroni_confidence(comparisons: int, confidence: float = CONFIDENCE) -> float:
    """Per-comparison confidence keeping the family-wise error of `comparisons` intervals below 1 − confidence."""
    if comparisons < 1:
        raise ValueError("comparisons must be at least 1")
    return 1 - (1 - confidence) / comparisons


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion successes / n:

    centre = (p + z²/2n) / (1 + z²/n),  half-width = z / (1 + z²/n) · sqrt(p(1 − p)/n + z²/4n²)
    """
    if n < 1:
        raise ValueError("a proportion of no rows has no interval")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def proportion(outcomes: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """The mean of 0/1 outcomes (an accuracy) with its Wilson interval."""
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a proportion of no rows is undefined")
    if not np.all((values == 0) | (values == 1)):
        raise ValueError("a proportion's outcomes must be 0 or 1")
    low, high = wilson(float(values.sum()), int(values.size), confidence)
    return Estimate(float(values.mean()), int(values.size), low, high, "wilson")


def _indices(n: int, seed: int, resamples: int) -> np.ndarray:
    # One generator per call, seeded: the same rows and seed give the same interval on every machine.
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    defined = samples[~np.isnan(samples)]
    if defined.size == 0 or (samples.size - defined.size) / samples.size > MAX_UNDEFINED_FRACTION:
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean(
    values: Sequence[float],
    seed: int,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """The mean of `values` with its percentile-bootstrap interval (one row: no interval)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("the mean of no rows is undefined")
    if array.size == 1:
        return Estimate(float(array[0]), 1, None, None, "bootstrap")
    means = array[_indices(array.size, seed, resamples)].mean(axis=1)
    low, high = _percentile_interval(means, confidence)
    return Estimate(float(array.mean()), int(array.size), low, high, "bootstrap")


def paired_bootstrap(
    columns: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], np.ndarray],
    seed: int,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """A statistic of the columns' means, with the interval from resampling the rows jointly.

    `columns` are per-row values of the same rows (equal lengths). `statistic(means)` takes an array of shape
    (number of columns, k) and returns k values, NaN where undefined; it is called once on the observed means
    (k = 1) and once on every resample's (k = resamples).
    """
    array = np.asarray(columns, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError("paired_bootstrap needs columns of equal, non-zero length")
    n = int(array.shape[1])
    value = float(statistic(array.mean(axis=1, keepdims=True))[0])
    if n == 1:
        return Estimate(value, 1, None, None, "paired_bootstrap")
    indices = _indices(n, seed, resamples)
    # means[c, b] = mean of column c over resample b's rows.
    means = array[:, indices].mean(axis=2)
    low, high = _percentile_interval(np.asarray(statistic(means), dtype=np.float64), confidence)
    return Estimate(value, n, low, high, "paired_bootstrap")


def stratified_bootstrap(
    sizes: Sequence[int],
    statistic: Callable[..., np.ndarray],
    seed: int,
    paired: bool = False,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """A statistic of several strata of rows, with the interval from resampling each stratum's rows on its own.

    `sizes` are the strata's row counts. `statistic(*indices)` gets one integer array of shape (k, size) per
    stratum, each row a draw of that stratum's row indices, and returns k values (NaN where undefined); it is
    called once with the observed rows (k = 1, every index once) and once with every resample's (k = resamples).
    A statistic that reads several columns of the same rows (two LMs' scores of them) reads them at the same
    indices: resampled jointly, `paired`. `n` is the rows of all strata; a stratum of one row gives no interval.
    """
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError("stratified_bootstrap needs strata of at least one row")
    n = sum(sizes)
    method: IntervalMethod = "paired_bootstrap" if paired else "bootstrap"
    value = float(statistic(*(np.arange(size)[None] for size in sizes))[0])
    if any(size == 1 for size in sizes):
        return Estimate(value, n, None, None, method)
    # One generator draws every stratum's indices in turn: the same rows and seed give the same interval.
    rng = np.random.default_rng(seed)
    indices = [rng.integers(0, size, size=(resamples, size)) for size in sizes]
    low, high = _percentile_interval(np.asarray(statistic(*indices), dtype=np.float64), confidence)
    return Estimate(value, n, low, high, method)
