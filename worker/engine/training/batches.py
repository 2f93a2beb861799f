"""Rows as the trainer sees them: tokenized (context, target) examples, left-padded batches with their labels (and
the same batch packed into one row without padding, what the LM is fed where it can be), and the seeded shuffled
order they are drawn in."""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lethe.rows import Row
from worker.engine.lm.inputs import encode_pair, fit_pair, pad

# Label id ignored by the cross-entropy (context and padding positions).
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """A (context, target) pair tokenized as the LM sees it: `ids`, whose last `n_target` tokens are the target."""

    ids: tuple[int, ...]
    n_target: int


def make_example(tokenizer: PreTrainedTokenizerBase, context: str, target: str, limit: int) -> Example:
    """Tokenize like lm-eval's `_encode_pair`; a target longer than the context window keeps its beginning."""
    ids, n_target = fit_pair(*encode_pair(tokenizer, context, target), limit)
    return Example(tuple(ids), n_target)


def examples_of(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], limit: int) -> list[Example]:
    """Each row's true (context, target) pair as an Example."""
    return [make_example(tokenizer, row.context, row.target, limit) for row in rows]


@dataclass(frozen=True)
class Packed:
    """A batch's sequences end to end in one row, no padding: `input_ids` and `position_ids` [1, tokens], each
    sequence's positions counting from 0 again.

    With no attention mask, transformers reads the restarting positions as packed sequences and gives attention a
    block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`): every token attends to its own
    sequence's earlier tokens only, exactly as in the padded batch, at the cost of the real tokens alone (the
    benchmark's ARC batches are 40% padding). `target_index` [n] are the packed positions that predict a target
    token, row by row, `target_ids` those tokens and `target_rows` their rows: the LM head runs at those positions
    alone, which are all the losses read (`logprobs.TargetLogits`).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    target_index: torch.Tensor
    target_ids: torch.Tensor
    target_rows: torch.Tensor

    def lm_inputs(self) -> dict[str, Any]:
        # No KV cache: transformers looks for packed sequences only without one.
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "logits_to_keep": self.target_index,
            "use_cache": False,
        }


def pack(examples: Sequence[Example], device: torch.device) -> Packed:
    """`examples` end to end (see `Packed`)."""
    ids: list[int] = []
    positions: list[int] = []
    target_index: list[int] = []
    target_ids: list[int] = []
    target_rows: list[int] = []
    for row, example in enumerate(examples):
        start, length = len(ids), len(example.ids)
        ids.extend(example.ids)
        positions.extend(range(length))
        # The target is the last n_target tokens; token j is predicted at position j - 1 (the first token, which
        # nothing precedes, by none: as in the padded batch, whose labels' first column no logits predict).
        predicted = range(max(length - example.n_target, 1), length)
        target_index.extend(start + j - 1 for j in predicted)
        target_ids.extend(example.ids[j] for j in predicted)
        target_rows.extend(row for _ in predicted)

    def tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return Packed(
        input_ids=tensor(ids)[None],
        position_ids=tensor(positions)[None],
        target_index=tensor(target_index),
        target_ids=tensor(target_ids),
        target_rows=tensor(target_rows),
    )


@dataclass
class Batch:
    """Left-padded examples: every sequence ends in the last column, so all targets sit in the last `keep` columns.

    `labels` hold the target tokens and IGNORE elsewhere; `position_ids` count each sequence's own tokens from 0.
    Only the logits of the last `keep` positions can predict a target token, so the LM computes no others (its
    output head is a fifth of SmolLM2's compute per token, and a full-vocabulary log-softmax over every position
    is most of a step's memory traffic).

    `packed` is the same batch without padding (see `Packed`): what `Step` feeds the LM when it only needs the
    logits and packing pays (`packing.packing_pays`), built from `examples` the first time it is asked for (a batch
    fed padded never builds it: on a GPU its three host-to-device copies are part of a step's launch overhead). The
    padded tensors stay for whoever reads per-position states (RMU's activations, hidden states).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    keep: int
    examples: Sequence[Example] = ()

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tokens(self) -> int:
        """The batch's tokens without padding (its packed row's length), from the examples alone (no device sync);
        the padded batch's cells where it has no examples."""
        return sum(len(e.ids) for e in self.examples) if self.examples else int(self.input_ids.numel())

    @functools.cached_property
    def packed(self) -> Packed | None:
        """The batch packed into one row; None where it has no examples."""
        return pack(self.examples, self.input_ids.device) if self.examples else None

    @property
    def target_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def lm_inputs(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "logits_to_keep": self.keep,
        }


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> Batch:
    """One batch of examples, left-padded to the longest."""
    input_ids, attention_mask = pad([e.ids for e in examples], pad_id, device, side="left")
    width = input_ids.shape[1]
    # Each sequence counts its own tokens from 0 (padding, which nothing attends to, sits at 0 too).
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # The targets are the last n_target tokens of each sequence.
    n_target = torch.tensor([e.n_target for e in examples], device=device)
    labels = input_ids.masked_fill(torch.arange(width, device=device) < width - n_target[:, None], IGNORE)
    # Position t predicts token t + 1: a target of n tokens needs the logits of the last n + 1 columns.
    keep = min(max(e.n_target for e in examples) + 1, width)
    return Batch(input_ids, attention_mask, labels, position_ids, keep, examples)


def shuffled_batches(n: int, batch_size: int, seed: str) -> list[list[int]]:
    """Seeded shuffled batches of indices into n items."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


class RetainStream:
    """Retain batches drawn in seeded shuffled passes, one per optimiser step, for as long as training runs.

    `passes` (drawn so far) and `pending` (the current pass's batches not yet drawn) are its whole position.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, pad_id: int, device: torch.device):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.pad_id, self.device = pad_id, device
        self.passes = 0
        self.pending: list[list[int]] = []

    def next(self) -> Batch:
        if not self.pending:
            self.pending = shuffled_batches(len(self.examples), self.batch_size, f"{self.seed}/retain/{self.passes}")
            self.passes += 1
        return collate([self.examples[i] for i in self.pending.pop(0)], self.pad_id, self.device)
