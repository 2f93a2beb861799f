"""Multiple-choice metrics beyond accuracy, from `score_choices`' log-likelihoods."""

from __future__ import annotations

import numpy as np

from worker.engine.metrics.choice_scores import ChoiceScores


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
