import numpy as np
import pytest
import torch

from tests.tiny_lm import synthetic_choice_rows
from worker.engine.data import ChoiceRow
from worker.engine.lm import LoadedLM
from worker.engine.scoring import ChoiceScores, encode_pair, max_length, pair_sequence, score_choices


def mixed_rows() -> list[ChoiceRow]:
    """Rows of different lengths, a multi-token choice and three choices, to exercise padding."""
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(9, seed=1)]
    rows.append(ChoiceRow("The big drill is a ", ("tool", "fruit salad", "kiwi"), 0))
    rows.append(ChoiceRow("A", (" lemon is a fruit", " saw"), 1))
    return rows


def test_encode_pair_moves_trailing_whitespace_to_the_continuation(tiny_base: LoadedLM) -> None:
    tokenizer = tiny_base.tokenizer
    context_ids, continuation_ids = encode_pair(tokenizer, "The apple is a ", "fruit")
    assert (context_ids, continuation_ids) == encode_pair(tokenizer, "The apple is a", " fruit")
    assert context_ids == tokenizer.encode("The apple is a", add_special_tokens=False)
    assert tokenizer.decode(continuation_ids) == " fruit"
    # Without the move the space would be a context token of its own and " fruit" would not be scored.
    assert tokenizer.encode("The apple is a ", add_special_tokens=False) != context_ids


def test_encode_pair_with_empty_context_uses_eos(tiny_base: LoadedLM) -> None:
    tokenizer = tiny_base.tokenizer
    context_ids, continuation_ids = encode_pair(tokenizer, "", " fruit")
    assert context_ids == [tokenizer.eos_token_id]
    assert tokenizer.decode(continuation_ids) == " fruit"


def test_pair_sequence_left_truncates_and_refuses_overlong_choices() -> None:
    sequence, n_continuation = pair_sequence(list(range(200)), [7, 8], limit=128)
    assert len(sequence) == 128 and sequence[-2:] == [7, 8] and n_continuation == 2
    assert sequence[0] == 200 - 126
    with pytest.raises(ValueError):
        pair_sequence([1, 2], list(range(128)), limit=128)
    with pytest.raises(ValueError):
        pair_sequence([1, 2], [], limit=128)


def test_loglikelihood_matches_a_manual_computation(tiny_base: LoadedLM) -> None:
    lm, tokenizer = tiny_base.lm, tiny_base.tokenizer
    rows = mixed_rows()
    scores = score_choices(lm, tokenizer, rows, batch_size=4)
    for row, row_scores in zip(rows, scores.loglikelihoods, strict=True):
        for choice, score in zip(row.choices, row_scores, strict=True):
            context_ids, continuation_ids = encode_pair(tokenizer, row.prompt, choice)
            with torch.no_grad():
                logits = lm(torch.tensor([context_ids + continuation_ids])).logits[0]
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            # The token at position p is predicted by the logits at p - 1.
            expected = sum(
                float(log_probs[len(context_ids) + k - 1, token]) for k, token in enumerate(continuation_ids)
            )
            assert score == pytest.approx(expected, abs=1e-4)
            assert score < 0


def test_scores_do_not_depend_on_batch_size_or_padding(tiny_base: LoadedLM) -> None:
    rows = mixed_rows()
    one = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=1, collect_hidden=True)
    for batch_size in (3, 64):
        batched = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size, collect_hidden=True)
        np.testing.assert_allclose(
            np.concatenate(batched.loglikelihoods), np.concatenate(one.loglikelihoods), atol=1e-4
        )
        assert batched.hidden is not None and one.hidden is not None
        np.testing.assert_allclose(batched.hidden, one.hidden, atol=1e-4)


def test_hidden_states_have_one_vector_per_pair_and_layer(tiny_base: LoadedLM) -> None:
    rows = mixed_rows()
    scores = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=8, collect_hidden=True)
    n_pairs = sum(len(row.choices) for row in rows)
    config = tiny_base.lm.config
    assert scores.hidden is not None
    assert scores.hidden.shape == (n_pairs, config.num_hidden_layers + 1, config.hidden_size)
    assert score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=8).hidden is None


def test_overlong_prompts_are_left_truncated(tiny_base: LoadedLM) -> None:
    limit = max_length(tiny_base.lm, tiny_base.tokenizer)
    long_prompt = "The old saw is a tool. " * 40 + "The plum is a"
    assert len(tiny_base.tokenizer.encode(long_prompt)) > limit
    scores = score_choices(tiny_base.lm, tiny_base.tokenizer, [ChoiceRow(long_prompt, (" fruit", " tool"), 0)], 2)
    assert all(np.isfinite(scores.loglikelihoods[0]))


def test_accuracy_is_argmax_against_the_answer_with_ties_to_the_first() -> None:
    scores = ChoiceScores(
        loglikelihoods=[[-1.0, -2.0], [-3.0, -1.0, -2.0], [-1.0, -1.0], [-5.0, -4.0]], answers=[0, 0, 1, 1]
    )
    assert scores.predictions == [0, 1, 0, 1]
    assert scores.correct == [True, False, False, True]
    assert scores.accuracy == 0.5
    assert scores.pair_rows.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert scores.pair_is_answer.tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 1]
