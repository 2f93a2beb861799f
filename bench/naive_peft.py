"""Forgetting by gradient ascent as a user would write it with transformers + peft: the training baseline.

fp32, every batch padded to its longest sequence, plain AdamW, gradients clipped to norm 1 (HF Trainer's
default, and Lethe's), LoRA r=8 on every linear layer. The same rows in the same order as Lethe's loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lethe.rows import ChoiceRow


@dataclass
class TrainingRun:
    """What a timed training run did: optimiser steps, tokens fed (padding excluded), seconds, losses."""

    steps: int
    tokens: int
    seconds: float
    losses: list[float]  # the minimised loss of every step (−NLL of the answer tokens for gradient ascent)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def naive_gradient_ascent(
    model_dir: Path,
    rows: Sequence[ChoiceRow],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TrainingRun:
    """Gradient ascent on the answers of `rows` with LoRA, timed from the first batch to the last step.

    On `device` (a user with a GPU moves the model there) with the weights in `dtype` (fp32 by default, as above;
    bench/gpu_bench.py also runs it in bf16, the other way a GPU user loads a model).
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)  # type: ignore[arg-type]
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # LoRA's A matrices (B starts at zero)
    peft_model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)

    # prompt + answer, with the prompt's tokens (and later the padding) masked out of the labels.
    examples = []
    for row in rows:
        prompt_ids = tokenizer(row.prompt)["input_ids"]
        input_ids = tokenizer(row.prompt + row.choices[row.answer])["input_ids"]
        examples.append((input_ids, len(prompt_ids)))

    losses: list[float] = []
    tokens = 0
    peft_model.train()
    started = time.perf_counter()
    for epoch in range(epochs):
        order = list(range(len(rows)))
        random.Random(f"{seed}/order/{epoch}").shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100)
            for j, (ids, n_prompt) in enumerate(batch):
                input_ids[j, : len(ids)] = torch.tensor(ids)
                attention_mask[j, : len(ids)] = 1
                labels[j, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
                tokens += len(ids)
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
            loss = -peft_model(**{name: tensor.to(device) for name, tensor in inputs.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(peft_model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))  # on CUDA this waits for the step: the timing is the GPU's
    return TrainingRun(steps=len(losses), tokens=tokens, seconds=time.perf_counter() - started, losses=losses)
