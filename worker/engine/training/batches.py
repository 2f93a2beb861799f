"""Rows as the trainer sees them: tokenized (context, target) examples, left-padded batches with their labels, and
the seeded shuffled order they are drawn in."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lethe.rows import Row
from worker.engine.lm.inputs import encode_pair, pair_sequence

# Label id ignored by the cross-entropy (context and padding positions).
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """A (context, target) pair tokenized as the LM sees it: `ids`, whose last `n_target` tokens are the target."""

    ids: tuple[int, ...]
    n_target: int


def make_example(tokenizer: PreTrainedTokenizerBase, context: str, target: str, limit: int) -> Example:
    """Tokenize like lm-eval's `_encode_pair`; a target longer than the context window keeps its beginning."""
    context_ids, target_ids = encode_pair(tokenizer, context, target)
    ids, n_target = pair_sequence(context_ids, target_ids[: limit - 1], limit)
    return Example(tuple(ids), n_target)


def examples_of(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], limit: int) -> list[Example]:
    """Each row's true (context, target) pair as an Example."""
    return [make_example(tokenizer, row.context, row.target, limit) for row in rows]


@dataclass
class Batch:
    """Left-padded examples: every sequence ends in the last column, so all targets sit in the last `keep` columns.

    `labels` hold the target tokens and IGNORE elsewhere; `position_ids` count each sequence's own tokens from 0.
    Only the logits of the last `keep` positions can predict a target token, so the LM computes no others (its
    output head is a fifth of SmolLM2's compute per token, and a full-vocabulary log-softmax over every position
    is most of a step's memory traffic).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    keep: int

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

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
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    position_ids = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for j, example in enumerate(examples):
        start = width - len(example.ids)
        input_ids[j, start:] = torch.tensor(example.ids, dtype=torch.long)
        attention_mask[j, start:] = 1
        position_ids[j, start:] = torch.arange(len(example.ids))
        labels[j, width - example.n_target :] = input_ids[j, width - example.n_target :]
    # Position t predicts token t + 1: a target of n tokens needs the logits of the last n + 1 columns.
    keep = min(max(e.n_target for e in examples) + 1, width)
    return Batch(input_ids.to(device), attention_mask.to(device), labels.to(device), position_ids.to(device), keep)


def shuffled_batches(n: int, batch_size: int, seed: str) -> list[list[int]]:
    """Seeded shuffled batches of indices into n items."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


class RetainStream:
    """Retain batches drawn in seeded shuffled passes, one per optimiser step, for as long as training runs."""

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
