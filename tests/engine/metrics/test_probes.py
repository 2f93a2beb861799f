import numpy as np
import pytest

from worker.engine.metrics.choice_scores import ChoiceScores
from worker.engine.metrics.probes import probe_accuracy_by_layer


def scores_with_features(answers: list[int], n_choices: int, rng: np.random.Generator) -> ChoiceScores:
    """Layer 0: pure noise; layer 1: noise plus a coordinate that is 1 exactly on the correct choice."""
    n_rows = len(answers)
    correct = np.zeros((n_rows, n_choices))
    correct[np.arange(n_rows), answers] = 1.0
    noise = rng.normal(size=(n_rows * n_choices, 2, 8))
    hidden = noise.copy()
    hidden[:, 1, 0] += 10 * correct.reshape(-1)
    return ChoiceScores(loglikelihoods=[[0.0] * n_choices for _ in range(n_rows)], answers=list(answers), hidden=hidden)


@pytest.mark.parametrize("n_choices", [2, 4])
def test_a_probe_on_features_that_encode_the_answer_is_perfect(n_choices: int) -> None:
    rng = np.random.default_rng(0)
    train = scores_with_features(list(rng.integers(0, n_choices, 200)), n_choices, rng)
    heldout = scores_with_features(list(rng.integers(0, n_choices, 100)), n_choices, rng)
    done = []
    accuracies = probe_accuracy_by_layer(train, heldout, on_layer_done=lambda: done.append(1))
    assert len(accuracies) == 2 and len(done) == 2
    assert accuracies[1] == 1.0
    # Noise carries no answer: near chance (1 / n_choices), far from perfect.
    assert accuracies[0] < 1 / n_choices + 0.2


def test_probes_need_hidden_states() -> None:
    scores = ChoiceScores(loglikelihoods=[[0.0, 0.0]], answers=[0])
    with pytest.raises(ValueError):
        probe_accuracy_by_layer(scores, scores)
