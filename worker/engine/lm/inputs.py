"""What the LM is fed: (context, continuation) pairs tokenized as lm-eval does, cut to the LM's context length,
padded into batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from worker.engine.lm.load import CausalLM

# lm-eval's fallback when neither the config nor the tokenizer gives a usable context length.
_DEFAULT_MAX_LENGTH = 2048


def max_length(lm: CausalLM, tokenizer: PreTrainedTokenizerBase) -> int:
    """The LM's context length, looked up like lm-eval's HFLM.max_length."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(lm.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    model_max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max_length, int) and 0 < model_max_length < 1_000_000_000:
        return model_max_length
    return _DEFAULT_MAX_LENGTH


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as lm-eval's `_encode_pair` for a causal LM.

    Trailing whitespace of the context moves to the continuation (so " Paris" and not "Paris" is scored
    after "is "); the continuation's ids are those of tok(context + continuation) beyond len(tok(context)),
    so merges across the boundary are attributed to the continuation. No special tokens are added.
    An empty context becomes the EOS token, as lm-eval's `loglikelihood` does.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context == "":
        return [tokenizer.eos_token_id], tokenizer.encode(continuation, add_special_tokens=False)
    whole_ids = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return context_ids, whole_ids[len(context_ids) :]


def pair_sequence(context_ids: list[int], continuation_ids: list[int], limit: int) -> tuple[list[int], int]:
    """The token sequence fed to the LM for a pair, left-truncated to `limit`, and its continuation length.

    lm-eval feeds (context + continuation)[-(limit + 1):][:-1]; we also feed the last token (its hidden state
    is what the probes read), so an over-long prompt keeps one context token fewer than in lm-eval.
    """
    if not continuation_ids:
        raise ValueError("a choice encodes to no tokens of its own after the prompt")
    if len(continuation_ids) >= limit:
        raise ValueError(f"a choice of {len(continuation_ids)} tokens does not fit the LM's context ({limit})")
    return (context_ids + continuation_ids)[-limit:], len(continuation_ids)


def fit_pair(context_ids: list[int], target_ids: list[int], limit: int) -> tuple[list[int], int]:
    """`pair_sequence` for a target that may be longer than the window: it keeps its beginning (limit − 1 tokens)
    and the context keeps its end."""
    if not target_ids:
        raise ValueError("a target encodes to no tokens of its own after its context")
    return pair_sequence(context_ids, target_ids[: limit - 1], limit)


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device, side: Literal["left", "right"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the sequences padded to the longest.

    Right padding leaves every real position as it is under causal attention (scoring); left padding puts every
    sequence's last token in the last column, where generation and training read it.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        columns = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        input_ids[i, columns] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[i, columns] = 1
    return input_ids.to(device), attention_mask.to(device)


def longest_first(
    lengths: Sequence[int], batch_size: int, costs: Sequence[int] | None = None, max_cost: int | None = None
) -> list[list[int]]:
    """Indices into `lengths` in batches of `batch_size`, longest first, so that a batch holds similar lengths.

    With `costs` and `max_cost`, a batch also ends before its items' costs would sum past `max_cost` (an item
    costing more goes alone): e.g. the number of positions whose logits a scoring batch computes."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    total = 0
    for i in order:
        cost = costs[i] if costs is not None else 0
        fits = max_cost is None or total + cost <= max_cost
        if batches and len(batches[-1]) < batch_size and fits:
            batches[-1].append(i)
            total += cost
        else:
            batches.append([i])
            total = cost
    return batches
