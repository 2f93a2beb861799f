"""Metric test helpers: hand-made token scores, qa/text rows the tiny LM can learn, and a copy trained on some.

The tiny LM fixtures (`tiny_base`, single-threaded torch) come from tests/engine/conftest.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from lethe.rows import QARow, Row, TextRow
from worker.engine.lm.inputs import encode_pair, pad
from worker.engine.lm.load import CausalLM, LoadedLM
from worker.engine.metrics.token_scores import TokenScores


def scores_of(
    probs: Sequence[float],
    correct: Sequence[bool] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> TokenScores:
    """TokenScores with the given target-token probabilities (the rest defaulted: all correct, μ = 0, σ = 1)."""
    n = len(probs)
    return TokenScores(
        token_ids=np.arange(n),
        log_probs=np.log(np.asarray(probs, dtype=np.float64)),
        correct=np.asarray(correct if correct is not None else [True] * n, dtype=bool),
        mean=np.asarray(mean if mean is not None else [0.0] * n, dtype=np.float64),
        std=np.asarray(std if std is not None else [1.0] * n, dtype=np.float64),
    )


def qa_rows() -> list[QARow]:
    """Questions about the tiny task's things; some with a paraphrased answer and perturbed answers."""
    return [
        QARow(
            "What is the red apple?",
            "The red apple is a fruit",
            paraphrased_answer="A fruit is the red apple",
            perturbed_answers=("The red apple is a tool", "The red apple is a saw"),
        ),
        QARow("What is the big saw?", "The big saw is a tool"),
        QARow(
            "What is the old plum?",
            "The old plum is a fruit",
            paraphrased_answer="A fruit is the old plum",
            perturbed_answers=("The old plum is a drill",),
        ),
        QARow("What is the new drill?", "The new drill is a tool"),
        QARow("What is the green lime?", "The green lime is a fruit", paraphrased_answer="A fruit"),
    ]


def heldout_qa_rows() -> list[QARow]:
    """Rows like qa_rows that the trained LM never sees (non-members)."""
    return [
        QARow("What is the small fig?", "The small fig is a fruit"),
        QARow("What is the red vise?", "The red vise is a tool"),
        QARow("What is the old kiwi?", "The old kiwi is a fruit"),
        QARow("What is the big rasp?", "The big rasp is a tool"),
    ]


def text_rows() -> list[TextRow]:
    """Passages of different lengths, one too short to continue (1 token)."""
    return [
        TextRow("The red apple is a fruit. The big saw is a tool. The old plum is a fruit."),
        TextRow("The new drill is a tool and the green lime is a fruit"),
        TextRow("The small fig is a fruit, the red vise is a tool, the old kiwi is a fruit, the big rasp is a tool."),
        TextRow("a"),
    ]


def fine_tune(
    lm: CausalLM, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], steps: int, learning_rate: float = 1e-2
) -> CausalLM:
    """A copy of `lm` trained with Adam on the NLL of every row's target (all parameters, whole batch)."""
    tuned = copy.deepcopy(lm)
    tuned.requires_grad_(True)
    tuned.train()
    pairs = [encode_pair(tokenizer, row.context, row.target) for row in rows]
    input_ids, attention_mask = pad([c + t for c, t in pairs], tokenizer.pad_token_id, torch.device("cpu"), "right")
    labels = torch.full_like(input_ids, -100)
    for j, (context, target) in enumerate(pairs):
        labels[j, len(context) : len(context) + len(target)] = input_ids[j, len(context) : len(context) + len(target)]
    optimizer = torch.optim.Adam(tuned.parameters(), lr=learning_rate)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(steps):
            optimizer.zero_grad()
            tuned(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
            optimizer.step()
    tuned.eval()
    tuned.requires_grad_(False)
    return tuned


@pytest.fixture(scope="session")
def qa_tuned(tiny_base: LoadedLM) -> CausalLM:
    """The tiny LM trained on qa_rows' answers and paraphrased answers (the facts in both phrasings)."""
    rows = qa_rows()
    paraphrased = [QARow(row.question, row.paraphrased_answer) for row in rows if row.paraphrased_answer]
    return fine_tune(tiny_base.lm, tiny_base.tokenizer, [*rows, *paraphrased], steps=60)


@pytest.fixture(scope="session")
def text_tuned(tiny_base: LoadedLM) -> CausalLM:
    """The tiny LM trained on text_rows' passages."""
    return fine_tune(tiny_base.lm, tiny_base.tokenizer, text_rows(), steps=30)


def assert_close(a: float | None, b: float | None, tolerance: float = 1e-4) -> None:
    assert (a is None) == (b is None), (a, b)
    if a is not None and b is not None:
        assert math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance), (a, b)
