"""Diagnostics' shared parts: windows of layers, answer logits, and the Knowledge Recovery Score by hand."""

from __future__ import annotations

import pytest
import torch

from lethe.rows import QARow, Row, TextRow
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.diagnostics import (
    ANSWER_TOKENS,
    KnowledgeRecovery,
    Window,
    answer_logits,
    each_answer_logits,
    mean_squared_error,
    windows,
)
from worker.engine.lm.load import LoadedLM


def test_windows_are_centred_and_cut_to_the_blocks() -> None:
    # Hong et al.'s sweep: l-2..l+2 around every layer.
    every = windows(5, 30, "all")
    assert len(every) == 30
    assert (every[0], every[1], every[10], every[29]) == (Window(0, 2), Window(0, 3), Window(8, 12), Window(27, 29))
    # An even size reaches one layer further up than down.
    assert windows(4, 30, [10]) == [Window(9, 12)]
    assert windows(1, 3, "all") == [Window(0, 0), Window(1, 1), Window(2, 2)]
    # On 2 blocks, both 5-windows are the whole LM: one window.
    assert windows(5, 2, "all") == [Window(0, 1)]
    assert 3 in Window(2, 4) and 5 not in Window(2, 4) and None not in Window(2, 4)
    with pytest.raises(ValueError, match=r"layers \[30\] do not exist"):
        windows(5, 30, [3, 30])


def test_default_windows_tile_the_blocks() -> None:
    # Every block in exactly one window, from block 0, the last window cut to the LM's depth.
    assert windows(5, 30) == [Window(first, first + 4) for first in range(0, 30, 5)]
    assert windows(5, 12) == [Window(0, 4), Window(5, 9), Window(10, 11)]
    assert windows(1, 3) == windows(1, 3, "all")
    assert windows(5, 2) == [Window(0, 1)]
    tiles = windows(3, 31)
    assert sorted(layer for w in tiles for layer in range(w.first, w.last + 1)) == list(range(31))


def test_krs_against_a_hand_computation() -> None:
    before = [
        torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[5.0, 5.0]]),
    ]
    forgotten = [
        torch.tensor([[1.0, 0.0], [3.0, 0.0]]),  # MSE = (0 + 4 + 0 + 16) / 4 = 5
        torch.tensor([[1.0, 1.0]]),  # MSE = 1
        torch.tensor([[5.0, 5.0]]),  # forgetting moved nothing: no KRS
    ]
    intervened = [
        torch.tensor([[1.0, 1.0], [3.0, 2.0]]),  # MSE = (0 + 1 + 0 + 4) / 4 = 1.25: KRS = 1 - 1.25 / 5 = 0.75
        torch.tensor([[2.0, 2.0]]),  # MSE = 4: KRS = 1 - 4 / 1 = -3 (moved further away)
        torch.tensor([[9.0, 9.0]]),
    ]
    assert mean_squared_error(before[0], forgotten[0]) == 5.0
    recovery = KnowledgeRecovery.of_logits(before, forgotten, seed=0)
    assert recovery.moved == [5.0, 1.0, 0.0]
    assert recovery.per_row(recovery.errors(intervened)) == [0.75, -3.0, None]
    assert recovery.rows_undefined == 1
    estimate = recovery.score(recovery.errors(intervened))
    assert estimate is not None
    assert (estimate.value, estimate.n, estimate.method) == (-1.125, 2, "bootstrap")
    assert estimate.ci_low is not None and estimate.ci_high is not None
    assert -3.0 <= estimate.ci_low <= -1.125 <= estimate.ci_high <= 0.75
    # The pre-forgetting logits themselves: KRS 1; the forgotten ones: KRS 0.
    assert recovery.per_row(recovery.errors(before)) == [1.0, 1.0, None]
    assert recovery.per_row(recovery.errors(forgotten)) == [0.0, 0.0, None]
    assert KnowledgeRecovery.of_logits(before[2:], forgotten[2:], seed=0).score([0.0]) is None
    # Rows of another split are refused, however they come.
    with pytest.raises(ValueError, match="same rows"):
        recovery.errors(intervened[:2])
    with pytest.raises(ValueError, match="same rows"):
        recovery.per_row([1.0])
    with pytest.raises(ValueError, match="same rows"):
        KnowledgeRecovery(before, [1.0], seed=0)


def test_answer_logits_are_those_that_predict_the_answer(tiny_base: LoadedLM, precision: str) -> None:
    """Batched, right-padded, cut to ANSWER_TOKENS: each row's logits equal a plain forward pass of the row alone,
    at the positions from the prompt's last token to the answer's last but one."""
    lm, tokenizer = tiny_base.lm, tiny_base.tokenizer
    qa: list[Row] = [QARow.from_dict(row) for row in synthetic_qa_rows(3, seed=1)]
    long_text = " ".join(["The red apple is a fruit."] * 12)
    rows = [*qa, TextRow(text=long_text)]
    logits = answer_logits(lm, tokenizer, rows, batch_size=3, limit=128)
    for row, got in zip(rows, logits, strict=True):
        context = tokenizer.encode(row.context, add_special_tokens=False) if row.context else [tokenizer.eos_token_id]
        answer = tokenizer.encode(row.context + row.target, add_special_tokens=False)[len(context) :]
        if not row.context:
            answer = tokenizer.encode(row.target, add_special_tokens=False)
        answer = answer[:ANSWER_TOKENS]
        with torch.no_grad():
            full = lm(input_ids=torch.tensor([context + answer])).logits[0]
        expected = full[len(context) - 1 : len(context) + len(answer) - 1]
        assert got.shape == (len(answer), lm.config.vocab_size)
        # bf16 autocast (one of the test's two runs) keeps about 3 significant digits of the matmuls.
        tolerance = 1e-4 if precision == "fp32" else 2e-2
        torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    assert logits[-1].shape[0] == ANSWER_TOKENS
    # A reduction gets each row's logits with the row's index as the batches (longest first) come out; what it
    # returns comes back in row order.
    seen: list[int] = []

    def total(row: int, row_logits: torch.Tensor) -> tuple[int, float]:
        seen.append(row)
        return row, float(row_logits.sum())

    reduced = each_answer_logits(lm, tokenizer, rows, 3, 128, total)
    assert reduced == [(i, pytest.approx(float(z.sum()))) for i, z in enumerate(logits)]
    assert seen != sorted(seen) and sorted(seen) == list(range(len(rows)))
