"""Per-layer linear probes: can the hidden states still solve a task the LM's outputs have 'forgotten'?

Following the seed paper (arXiv 2409.02228, linear probes on representations), each layer gets a logistic
regression on standardized hidden states of (prompt, choice) pairs at the pair's last token, trained on the
forget-train pairs with label 1 for the correct choice and 0 for the others. On forget-heldout a row is
predicted as the choice whose pair the probe scores highest, and probe accuracy is the fraction of heldout
rows predicted correctly (chance is the same as for the LM's own answers).

Scoring pairs rather than classifying a prompt into answer slots works for any number of choices, for rows
with different numbers of choices, and for prompts that do not list the choices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import PreTrainedTokenizerBase

from lethe.rows import ChoiceRow, QARow
from worker.engine.lm.load import CausalLM
from worker.engine.metrics.choice_scores import ChoiceScores, score_choices

# sklearn's default L2 strength (C=1) with more iterations than its default 100, which lbfgs often needs
# on a few hundred standardized features.
PROBE_MAX_ITER = 1000


def probe_accuracy_by_layer(
    train: ChoiceScores, heldout: ChoiceScores, on_layer_done: Callable[[], None] | None = None
) -> list[float]:
    """Heldout probe accuracy of every layer (index 0 = embeddings), probes fitted on `train`'s pairs."""
    return [float(np.mean(correct)) for correct in probe_correct_by_layer(train, heldout, on_layer_done)]


def probe_correct_by_layer(
    train: ChoiceScores, heldout: ChoiceScores, on_layer_done: Callable[[], None] | None = None
) -> list[np.ndarray]:
    """Per layer (index 0 = embeddings), whether each heldout row's probe prediction is its answer."""
    if train.hidden is None or heldout.hidden is None:
        raise ValueError("probes need scores computed with collect_hidden=True")
    labels = train.pair_is_answer
    answers = np.asarray(heldout.answers)
    # Pairs are row-major, so each heldout row's pairs are one contiguous slice.
    row_bounds = np.cumsum([len(scores) for scores in heldout.loglikelihoods])[:-1]
    correct = []
    for layer in range(train.hidden.shape[1]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER))
        with warnings.catch_warnings():
            # A probe that has not fully converged still gives a valid (lower) bound on what the layer encodes.
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(train.hidden[:, layer], labels)
        pair_scores = probe.decision_function(heldout.hidden[:, layer])
        predictions = np.array([np.argmax(row) for row in np.split(pair_scores, row_bounds)])
        correct.append(predictions == answers)
        if on_layer_done is not None:
            on_layer_done()
    return correct


def qa_probe_rows(rows: Sequence[QARow]) -> list[ChoiceRow]:
    """qa rows as the probe's choice rows: the true answer (choice 0) against the perturbed answers.

    The probe asks whether an answer is the true or a perturbed one; rows without perturbed answers are left out.
    """
    return [
        ChoiceRow(row.context, (row.target, *(" " + answer for answer in row.perturbed_answers)), 0)
        for row in rows
        if row.perturbed_answers
    ]


def qa_probe_scores(
    lm: CausalLM, tokenizer: PreTrainedTokenizerBase, rows: Sequence[QARow], batch_size: int
) -> ChoiceScores | None:
    """Hidden states of the `qa_probe_rows` pairs (the qa probe's data); None when no row has perturbed answers."""
    choice_rows = qa_probe_rows(rows)
    if not choice_rows:
        return None
    return score_choices(lm, tokenizer, choice_rows, batch_size, collect_hidden=True)
