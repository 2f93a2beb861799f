"""Pairs tokenized as lm-eval does, cut to the window, padded."""

import pytest
import torch

from worker.engine.lm.inputs import encode_pair, longest_first, pad, pair_sequence
from worker.engine.lm.load import LoadedLM


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


def test_left_padding_puts_padding_before_the_tokens() -> None:
    input_ids, attention_mask = pad([[1, 2, 3], [4]], pad_id=0, device=torch.device("cpu"), side="left")
    assert input_ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_longest_first_ends_a_batch_at_its_cost_budget() -> None:
    lengths = [5, 9, 7, 3, 8]
    assert longest_first(lengths, 2) == [[1, 4], [2, 0], [3]]
    # Costs 4, 6, 1, 2, 3 (by index), at most 7 a batch: 9 (6) alone, as 8 (3) would pass 7; 7 (1) joins 8 (4 in
    # all); 5 (4) would pass 7, so starts a batch that 3 (2) joins.
    assert longest_first(lengths, 3, costs=[4, 6, 1, 2, 3], max_cost=7) == [[1], [4, 2], [0, 3]]
    # An item over the budget goes alone.
    assert longest_first([4, 2], 8, costs=[10, 1], max_cost=5) == [[0], [1]]
