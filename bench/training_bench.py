"""Forget training (gradient ascent, LoRA r=8 on every linear layer): Lethe's loop against a naive PEFT loop."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from bench.naive_peft import TrainingRun
from lethe.methods import GradientAscentParams
from lethe.rows import ChoiceRow
from worker.engine.lm.inputs import max_length
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attached_lora, lora_config
from worker.engine.methods import gradient_ascent
from worker.engine.training.batches import Example
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import LossTerms, Objective, Step, TrainContext

LORA_RANK = 8
LORA_ALPHA = 16


class _RecordingObjective(Objective):
    """Another objective's losses, with every step's loss kept (the loss curve)."""

    def __init__(self, inner: Objective) -> None:
        self.inner = inner
        self.uses_retain = inner.uses_retain
        self.losses_seen: list[float] = []

    def prepare(self, context: TrainContext) -> None:
        self.inner.prepare(context)

    def forget_examples(self, epoch: int, examples: list[Example]) -> list[Example]:
        return self.inner.forget_examples(epoch, examples)

    def losses(self, step: Step) -> LossTerms:
        terms = self.inner.losses(step)
        self.losses_seen.append(float(terms.total.detach()))
        return terms


def lethe_gradient_ascent(
    base: LoadedLM, rows: Sequence[ChoiceRow], *, epochs: int, batch_size: int, learning_rate: float, seed: int
) -> TrainingRun:
    """Lethe's forgetting loop on `rows`, timed from the call into the loop to its return.

    The one place that calls Lethe's training API: when that API changes, only this function changes.
    """
    torch.manual_seed(seed)  # LoRA's A matrices, drawn as in the naive loop
    objective = _RecordingObjective(gradient_ascent.build(GradientAscentParams.model_validate({}), seed))
    limit = max_length(base.lm, base.tokenizer)
    schedule = Schedule(learning_rate=learning_rate, epochs=epochs, batch_size=batch_size)
    # As a job: the adapter on the cached base LM itself, taken off again afterwards.
    with attached_lora(base.lm, lora_config(base.lm, LORA_RANK, LORA_ALPHA)) as peft_lm:
        started = time.perf_counter()
        result = train(peft_lm, base.tokenizer, objective, rows, [], schedule, seed=seed, limit=limit)
        seconds = time.perf_counter() - started
    # Tokens fed: every row's prompt and answer once per epoch (padding excluded).
    tokens_per_epoch = sum(len(base.tokenizer(row.prompt + row.choices[row.answer])["input_ids"]) for row in rows)
    return TrainingRun(result.steps, epochs * tokens_per_epoch, seconds, objective.losses_seen)


def model_flops_per_token(base: LoadedLM, target_fraction: float) -> float:
    """Matmul FLOPs one trained token needs: what MFU divides by. Documented in BENCHMARKS.md.

    Forward 2·N, backward 2·N for the activation gradients (the frozen weights need no weight gradients),
    over the N weights of every linear layer but the LM head; the head (vocab × hidden) only where a target
    token is predicted (`target_fraction` of the tokens); the LoRA weights 6·N_lora (they get gradients).
    Attention's score/value products (≈ 4·layers·hidden·context per token, under 2% here) are left out.
    """
    head = base.lm.get_output_embeddings()
    body = sum(m.weight.numel() for m in base.lm.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    lora = sum(
        LORA_RANK * (m.in_features + m.out_features)
        for m in base.lm.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )
    return 4 * body + target_fraction * 4 * head.weight.numel() + 6 * lora
