"""Helpers for the method tests: fresh adapters on the taught tiny LM, NLLs, short training runs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lethe.methods import METHODS
from lethe.rows import Row
from worker.engine.lm.lora import attach_lora
from worker.engine.methods.implementations import build_objective
from worker.engine.methods.plugins import build_plugins
from worker.engine.training.batches import Batch, collate, examples_of
from worker.engine.training.logprobs import mean_nll
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Step

LIMIT = 64


@dataclass
class Task:
    lm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    forget: list[Row]
    retain: list[Row]


def batch_of(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row]) -> Batch:
    return collate(examples_of(tokenizer, rows, LIMIT), tokenizer.pad_token_id, torch.device("cpu"))


def teach(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], steps: int = 60) -> Any:
    """A copy of `lm` fully trained on `rows` (Adam, one batch of all rows), frozen, in eval mode; in fp32 (a base LM
    loaded under bf16 autocast stores its blocks' linear weights in bf16: `lm/block_weights.py`)."""
    lm = copy.deepcopy(lm).float()
    lm.requires_grad_(True)
    batch = batch_of(tokenizer, rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(lm.parameters(), lr=3e-3)
        for _ in range(steps):
            loss = mean_nll(lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    lm.requires_grad_(False)
    lm.eval()
    assert float(loss.detach()) < 0.2, "the tiny LM did not learn the task"
    return lm


def fresh_peft_lm(task: Task, layers: list[int] | None = None) -> PeftModel:
    torch.manual_seed(0)
    return attach_lora(copy.deepcopy(task.lm), rank=4, alpha=8, layers=layers)


def perturb_adapter(peft_lm: PeftModel) -> None:
    """Give LoRA's B matrices (zero at init) random values, so that the adapter changes the LM."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)


def nll(lm: Any, batch: Batch) -> float:
    with torch.no_grad():
        return float(mean_nll(lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels))


def step_of(task: Task, peft_lm: PeftModel, forget: Sequence[Row], retain: Sequence[Row] | None = None) -> Step:
    """A training step on all of `forget` (and `retain`) as one batch each."""
    return Step(
        lm=peft_lm,
        forget=batch_of(task.tokenizer, forget),
        retain=batch_of(task.tokenizer, retain) if retain is not None else None,
        number=0,
        epoch=0,
        forget_indices=range(len(forget)),
    )


def train_method(
    task: Task, name: str, params: dict[str, Any], steps: int = 8, learning_rate: float = 1e-2, rows: Any = None
) -> PeftModel:
    """`steps` optimiser steps of method `name` (batch 8) on a fresh adapter, as the forget run wires it."""
    parsed = METHODS.get(name).parse({**params, "learning_rate": learning_rate})
    peft_lm = fresh_peft_lm(task, parsed.adapted_layers(task.lm.config.num_hidden_layers))
    train(
        peft_lm,
        task.tokenizer,
        build_objective(name, parsed, 0),
        rows if rows is not None else task.forget,
        task.retain,
        Schedule(learning_rate=learning_rate, epochs=100, batch_size=8, max_steps=steps),
        seed=0,
        limit=LIMIT,
        plugins=build_plugins(parsed),
    )
    return peft_lm
