"""LoRA attachment and the one training loop over choice rows that fine-tuning and the methods share."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from worker.engine.data import ChoiceRow
from worker.engine.scoring import encode_pair, max_length, pad_right, pair_sequence

# HF TrainingArguments defaults: no weight decay, gradients clipped to norm 1 (keeps gradient ascent,
# whose loss is unbounded below, from taking huge steps).
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0

# Label id ignored by the cross-entropy (prompt and padding positions).
IGNORE = -100


class ChoiceObjective:
    """Fine-tuning on the true answers; a method subclasses it and overrides only what differs.

    `target` picks the choice whose continuation tokens are trained on; `loss` maps the mean NLL of those
    tokens over the batch to the loss that is minimised.
    """

    def target(self, epoch: int, index: int, row: ChoiceRow) -> int:
        """The choice trained on for row `index` of the training set in `epoch`."""
        return row.answer

    def loss(self, nll: torch.Tensor) -> torch.Tensor:
        """The loss to minimise given the batch's mean token NLL of the target continuations."""
        return nll


@dataclass(frozen=True)
class TrainingResult:
    """How a training run ended: optimiser steps taken and why it stopped (epochs|max_steps|chance)."""

    steps: int
    stop_reason: str


def attach_lora(lm: PreTrainedModel, rank: int, alpha: int) -> PeftModel:
    """Wrap `lm` with fresh LoRA adapters on every linear layer (the output head excluded)."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; not ours to fix, just noise.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(lm, config)


def train_on_choices(
    peft_lm: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[ChoiceRow],
    objective: ChoiceObjective,
    *,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    seed: int,
    max_steps: int | None = None,
    after_epoch: Callable[[int, int], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainingResult:
    """Train the LoRA parameters with AdamW on the rows' target continuations, in seeded shuffled batches.

    `after_epoch(epoch, steps)` runs after every epoch and returns True to stop (stop_reason "chance");
    `on_step(rows_in_batch)` runs after every optimiser step.
    """
    limit = max_length(peft_lm, tokenizer)
    # Every (row, choice) sequence once; the objective picks which choice of a row is trained on.
    sequences = [
        [pair_sequence(*encode_pair(tokenizer, row.prompt, choice), limit) for choice in row.choices] for row in rows
    ]
    trainable = [p for p in peft_lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=WEIGHT_DECAY)
    device = next(peft_lm.parameters()).device
    steps = 0
    for epoch in range(epochs):
        peft_lm.train()
        order = list(range(len(rows)))
        random.Random(f"{seed}/order/{epoch}").shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            chosen = [sequences[i][objective.target(epoch, i, rows[i])] for i in batch]
            input_ids, attention_mask = pad_right([sequence for sequence, _ in chosen], tokenizer.pad_token_id, device)
            # Labels are the inputs with everything but the continuation ignored.
            labels = torch.full_like(input_ids, IGNORE)
            for j, (sequence, n_continuation) in enumerate(chosen):
                continuation = slice(len(sequence) - n_continuation, len(sequence))
                labels[j, continuation] = input_ids[j, continuation]
            logits = peft_lm(input_ids=input_ids, attention_mask=attention_mask).logits
            # Position t predicts token t + 1; the mean runs over every continuation token in the batch.
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE
            )
            objective.loss(nll).backward()
            torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if on_step is not None:
                on_step(len(batch))
            if max_steps is not None and steps >= max_steps:
                peft_lm.eval()
                return TrainingResult(steps=steps, stop_reason="max_steps")
        peft_lm.eval()
        if after_epoch is not None and after_epoch(epoch, steps):
            return TrainingResult(steps=steps, stop_reason="chance")
    peft_lm.eval()
    return TrainingResult(steps=steps, stop_reason="epochs")
