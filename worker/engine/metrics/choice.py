"""Multiple-choice metrics of a split, from `score_choices`' log-likelihoods."""

from __future__ import annotations

import numpy as np

from worker.engine.metrics.choice_scores import ChoiceScores
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


def choice_result(scores: ChoiceScores, chance_accuracy: float) -> SplitResult:
    """accuracy, forget_gap (accuracy − chance: the seed paper's gap) and correct_probability, per row too."""
    probabilities = correct_probabilities(scores)
    correct = [1.0 if c else 0.0 for c in scores.correct]
    accuracy = scores.accuracy
    return SplitResult(
        aggregates={
            "accuracy": accuracy,
            "forget_gap": accuracy - chance_accuracy,
            "correct_probability": sum(probabilities) / len(probabilities),
        },
        per_example={"correct": list(correct), "correct_probability": list(probabilities)},
    )
