import math

import pytest

from worker.engine.metrics.choice import correct_probabilities, correct_probability
from worker.engine.metrics.choice_scores import ChoiceScores


def test_correct_probability_renormalizes_over_the_choices() -> None:
    scores = ChoiceScores(
        loglikelihoods=[[math.log(0.2), math.log(0.6)], [-3.0, -3.0, -3.0], [-1000.0, -1.0]],
        answers=[1, 0, 0],
    )
    # 0.6 / 0.8; three equal choices; e^-1000 against e^-1 (no underflow to 0/0)
    expected = [0.75, 1 / 3, math.exp(-999.0)]
    assert correct_probabilities(scores) == pytest.approx(expected, rel=1e-9, abs=0)
    assert correct_probability(scores) == pytest.approx(sum(expected) / 3)
    with pytest.raises(ValueError):
        correct_probability(ChoiceScores(loglikelihoods=[], answers=[]))
