"""Multiple-choice metrics of a split, from `score_choices`' log-likelihoods, with their 95% intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.engine.metrics.choice_scores import ChoiceScores
from worker.engine.metrics.intervals import Estimate, bootstrap_mean, paired_bootstrap, proportion
from worker.engine.metrics.values import SplitResult


def correct_probabilities(scores: ChoiceScores) -> list[float]:
    """Per row, the probability of the answer renormalized over the row's choices: softmax(summed log p)[answer].

    The probability mass the LM puts on the correct choice when it must pick one of them: open-unlearning's
    `probability_w_options` (TOFU real authors / world facts), but over summed rather than length-normalized
    log-probabilities, as lm-eval's `acc` ranks the choices. Chance is 1 / number of choices.
    """
    return [
        float(np.exp(row[answer] - np.logaddexp.reduce(np.asarray(row, dtype=np.float64))))
        for row, answer in zip(scores.loglikelihoods, scores.answers, strict=True)
    ]


def correct_probability(scores: ChoiceScores) -> float:
    """Mean over rows of `correct_probabilities`."""
    probabilities = correct_probabilities(scores)
    if not probabilities:
        raise ValueError("correct probability of no rows is undefined")
    return float(np.mean(probabilities))


def forget_gap(correct: list[float], row_chances: list[float], seed: int) -> Estimate:
    """accuracy − chance with its interval. With one chance for every row (every row has as many choices) the gap is
    a shifted proportion: Wilson's bounds minus chance. Otherwise each row's (correct − 1/its choices) varies in
    both terms, and the interval is a bootstrap of their mean."""
    if len(set(row_chances)) == 1:
        accuracy, chance = proportion(correct), row_chances[0]
        low, high = accuracy.ci_low, accuracy.ci_high
        assert low is not None and high is not None  # Wilson always draws one
        return Estimate(accuracy.value - chance, accuracy.n, low - chance, high - chance, "wilson")
    return bootstrap_mean([c - k for c, k in zip(correct, row_chances, strict=True)], seed)


def forget_ratio(
    correct_before: Sequence[float | None], correct_after: Sequence[float | None], chance: float, seed: int
) -> Estimate:
    """(acc_before − acc_after) / (acc_before − chance): the share of the above-chance accuracy forgetting removed.

    `correct_before` and `correct_after` are the same rows' 0/1 outcomes before and after forgetting, so the
    interval is a paired bootstrap: each resample draws one set of rows for both accuracies, keeping their
    correlation (a row known before tends to be known after), which independent resamples would ignore (when
    forgetting removes part of what was known, they overstate the width). Chance is fixed (the split's mean of
    1 / number of choices); a resample whose accuracy before is not above it has no ratio (NaN, dropped; too many
    and there is no interval).
    """

    def ratio(means: np.ndarray) -> np.ndarray:
        headroom = means[0] - chance
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(headroom > 0, (means[0] - means[1]) / headroom, np.nan)

    columns = [[float(v) for v in column if v is not None] for column in (correct_before, correct_after)]
    if any(len(column) != len(correct_before) for column in (*columns, correct_after)):
        raise ValueError("forget_ratio needs a 0/1 outcome of every row, before and after, on the same rows")
    return paired_bootstrap(columns, ratio, seed)


def choice_result(scores: ChoiceScores, seed: int = 0) -> SplitResult:
    """accuracy (Wilson), forget_gap (accuracy − chance: the seed paper's gap; chance = mean of 1 / number of
    choices) and correct_probability (bootstrap over rows, seeded by `seed`), per row too."""
    probabilities = correct_probabilities(scores)
    correct = [1.0 if c else 0.0 for c in scores.correct]
    row_chances = [1 / len(row) for row in scores.loglikelihoods]
    return SplitResult(
        estimates={
            "accuracy": proportion(correct),
            "forget_gap": forget_gap(correct, row_chances, seed),
            "correct_probability": bootstrap_mean(probabilities, seed),
        },
        per_example={"correct": list(correct), "correct_probability": list(probabilities)},
    )
