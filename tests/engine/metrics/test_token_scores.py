import numpy as np
import pytest
import torch

from lethe.rows import Row
from tests.engine.metrics.conftest import qa_rows, text_rows
from worker.engine.lm import head
from worker.engine.lm.inputs import encode_pair
from worker.engine.lm.load import LoadedLM
from worker.engine.metrics.token_scores import score_tokens


def pairs_of(tiny_base: LoadedLM) -> list[tuple[list[int], list[int]]]:
    rows: list[Row] = [*qa_rows(), *text_rows()]
    return [encode_pair(tiny_base.tokenizer, row.context, row.target) for row in rows]


def test_token_scores_match_a_manual_double_precision_computation(tiny_base: LoadedLM) -> None:
    pairs = pairs_of(tiny_base)
    scored = score_tokens(tiny_base.lm, tiny_base.tokenizer, pairs, batch_size=4)
    for (context, target), scores in zip(pairs, scored, strict=True):
        with torch.no_grad():
            logits = tiny_base.lm(torch.tensor([context + target])).logits[0].double()
        # The token at position p is predicted by the logits at p − 1.
        log_probs = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
        probs = log_probs.exp()
        mean = (probs * log_probs).sum(-1)
        std = ((probs * log_probs.square()).sum(-1) - mean.square()).sqrt()
        np.testing.assert_array_equal(scores.token_ids, target)
        np.testing.assert_allclose(scores.log_probs, log_probs[range(len(target)), target].numpy(), atol=1e-4)
        np.testing.assert_array_equal(scores.correct, (log_probs.argmax(-1) == torch.tensor(target)).numpy())
        np.testing.assert_allclose(scores.mean, mean.numpy(), atol=1e-4)
        np.testing.assert_allclose(scores.std, std.numpy(), atol=1e-4)


def test_token_scores_do_not_depend_on_batch_size(tiny_base: LoadedLM) -> None:
    pairs = pairs_of(tiny_base)
    one = score_tokens(tiny_base.lm, tiny_base.tokenizer, pairs, batch_size=1)
    batches: list[int] = []
    four = score_tokens(tiny_base.lm, tiny_base.tokenizer, pairs, batch_size=4, on_batch=batches.append)
    assert batches == [4, 4, 1]
    for a, b in zip(one, four, strict=True):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)
        np.testing.assert_allclose(a.std, b.std, atol=1e-5)
        np.testing.assert_array_equal(a.correct, b.correct)


def test_an_overlong_target_keeps_its_beginning_and_an_empty_one_is_refused(tiny_base: LoadedLM) -> None:
    window = tiny_base.lm.config.max_position_embeddings  # 128
    target = [5, 6, 7] * 60
    (scores,) = score_tokens(tiny_base.lm, tiny_base.tokenizer, [([1, 2], target)], batch_size=1)
    np.testing.assert_array_equal(scores.token_ids, target[: window - 1])
    with pytest.raises(ValueError):
        score_tokens(tiny_base.lm, tiny_base.tokenizer, [([1, 2], [])], batch_size=1)


def test_batches_end_at_the_logits_budget_and_scores_stay_the_same(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for the logits of 6 positions per batch (`head.LOGITS_BUDGET_BYTES`), a batch holds at most 6 target
    tokens (a target longer than that goes alone), and every score is what it was with the default budget."""
    pairs = pairs_of(tiny_base)
    default = score_tokens(tiny_base.lm, tiny_base.tokenizer, pairs, batch_size=4)
    vocab = tiny_base.lm.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(head, "LOGITS_BUDGET_BYTES", 6 * vocab * 4)
    sizes: list[int] = []
    tight = score_tokens(tiny_base.lm, tiny_base.tokenizer, pairs, batch_size=4, on_batch=sizes.append)
    assert sum(sizes) == len(pairs) and len(sizes) > 3  # more batches than batch_size alone makes (3)
    for a, b in zip(default, tight, strict=True):
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
        np.testing.assert_array_equal(a.correct, b.correct)
