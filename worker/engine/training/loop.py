"""The one training loop fine-tuning, every method and relearning share: AdamW on the LoRA parameters, in seeded
shuffled batches of forget rows (and retain batches where the objective or a plug-in uses them), evaluating on a
schedule that may stop it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from peft import PeftModel
from peft.helpers import disable_input_dtype_casting
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lethe.rows import Row
from worker.engine.lm.lora import LoraState, load_lora_state, reference_adapter
from worker.engine.lm.placement import input_device
from worker.engine.precision import autocast, mixed_precision_enabled
from worker.engine.training.batches import Example, RetainStream, collate, examples_of, shuffled_batches
from worker.engine.training.checkpointing import checkpointed, layers_to_checkpoint
from worker.engine.training.objective import GradientFilter, LossTerms, Objective, Plugins, Step, TrainContext
from worker.engine.training.snapshot import TrainingSnapshot, restore_rng

# HF TrainingArguments defaults: no weight decay, gradients clipped to norm 1 (keeps gradient ascent,
# whose loss is unbounded below, from taking huge steps).
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Schedule:
    """Optimiser and length of a training run."""

    learning_rate: float
    epochs: int
    batch_size: int
    max_steps: int | None = None
    # Evaluate (and maybe stop) every this many optimiser steps; None = after every epoch.
    evaluate_every: int | None = None


@dataclass(frozen=True)
class TrainingResult:
    """How a training run ended: optimiser steps taken and why it stopped (epochs|max_steps|<evaluator's>)."""

    steps: int
    stop_reason: str


def train(
    peft_lm: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    objective: Objective,
    forget_rows: Sequence[Row],
    retain_rows: Sequence[Row],
    schedule: Schedule,
    *,
    seed: int,
    limit: int,
    plugins: Plugins | None = None,
    evaluate: Callable[[int], str | None] | None = None,
    on_step: Callable[[int], None] | None = None,
    mixed_precision: bool | None = None,
    on_snapshot: Callable[[TrainingSnapshot], None] | None = None,
    snapshot_every: int = 0,
    resume: TrainingSnapshot | None = None,
    reference: LoraState | None = None,
) -> TrainingResult:
    """Train the LoRA parameters with AdamW on `objective`, in seeded shuffled batches of forget rows (of what
    `objective.forget_examples` passes over instead), and on the batches it interleaves between them.

    `evaluate(steps)` runs every `schedule.evaluate_every` steps (or after every epoch) and returns a stop reason
    to end training, or None to go on. `on_step(rows_in_batch)` runs after every optimiser step.
    `mixed_precision`: forward passes under bf16 autocast (weights, gradients and AdamW stay fp32); None = as
    LETHE_PRECISION says (see `precision.mixed_precision_enabled`).

    `on_snapshot(snapshot)` gets where training stands before the first step and every `snapshot_every` steps
    (after that step's evaluation). `resume`: such a snapshot to go on from; the LM must hold the weights it had
    when this run first started (the objective prepares from them), and the run then ends as the one it came from
    would have.

    `reference`: the trained adapter's state that makes the reference LM (`Step.reference`), held in a frozen second
    adapter slot while training runs; None = the base LM (adapter disabled). A forget run passes the fine-tuned
    adapter when it fine-tuned first, so that a resumed run rebuilds the same reference from its snapshot.
    """
    with reference_adapter(peft_lm, reference):
        return _train(
            peft_lm,
            tokenizer,
            objective,
            forget_rows,
            retain_rows,
            schedule,
            seed=seed,
            limit=limit,
            plugins=plugins,
            evaluate=evaluate,
            on_step=on_step,
            mixed_precision=mixed_precision,
            on_snapshot=on_snapshot,
            snapshot_every=snapshot_every,
            resume=resume,
        )


def _train(
    peft_lm: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    objective: Objective,
    forget_rows: Sequence[Row],
    retain_rows: Sequence[Row],
    schedule: Schedule,
    *,
    seed: int,
    limit: int,
    plugins: Plugins | None,
    evaluate: Callable[[int], str | None] | None,
    on_step: Callable[[int], None] | None,
    mixed_precision: bool | None,
    on_snapshot: Callable[[TrainingSnapshot], None] | None,
    snapshot_every: int,
    resume: TrainingSnapshot | None,
) -> TrainingResult:
    """`train` with the reference slot in place."""
    if on_snapshot is not None and snapshot_every < 1:
        raise ValueError("snapshot_every must be at least 1 when snapshots are taken")
    plugins = plugins or Plugins()
    if (objective.uses_retain or plugins.needs_retain) and not retain_rows:
        raise ValueError("this method needs retain rows (a retain dataset) and none were given")
    device = input_device(peft_lm)
    pad_id = tokenizer.pad_token_id
    objective.prepare(TrainContext(peft_lm, tokenizer, forget_rows, retain_rows, limit, seed))
    forget_examples = examples_of(tokenizer, forget_rows, limit)
    retain = None
    if objective.uses_retain or plugins.needs_retain:
        retain = RetainStream(examples_of(tokenizer, retain_rows, limit), schedule.batch_size, seed, pad_id, device)

    trainable = [p for p in peft_lm.parameters() if p.requires_grad]
    base_lm = cast(PreTrainedModel, peft_lm.get_base_model())
    # Under autocast the LoRA layers need not cast their inputs to their fp32 weights' dtype first: autocast casts
    # both to bf16 for the matmul anyway, so the results are the same without a full copy of each layer's input
    # (on an H200, casts were a fifth of a 1B model's training step where the weights are bf16).
    uses_autocast = mixed_precision if mixed_precision is not None else mixed_precision_enabled(device)
    optimizer = _adamw(trainable, schedule.learning_rate)
    steps, first_epoch, batches_done = 0, 0, 0
    if resume is not None:
        load_lora_state(peft_lm, resume.lora)
        resume.load_optimizer(optimizer)
        if retain is not None:
            retain.passes, retain.pending = resume.retain_passes, [list(b) for b in resume.retain_pending]
        restore_rng(resume.rng)
        steps, first_epoch, batches_done = resume.steps, resume.epoch, resume.batches_done

    def snapshot(epoch: int) -> None:
        if on_snapshot is not None:
            passes, pending = (retain.passes, retain.pending) if retain is not None else (0, [])
            on_snapshot(TrainingSnapshot.take(peft_lm, optimizer, steps, epoch, batches_done, passes, pending))

    def snapshot_due() -> bool:
        return on_snapshot is not None and steps % snapshot_every == 0

    def stop_reason_after_evaluation() -> str | None:
        peft_lm.eval()
        reason = evaluate(steps) if evaluate is not None else None
        peft_lm.train()
        return reason

    def optimise(examples: Sequence[Example], indices: Sequence[int], epoch: int, of_epoch: bool) -> str | None:
        """One optimiser step on `examples` (the epoch's next batch, or an interleaved one); a stop reason or None."""
        nonlocal steps, batches_done
        step = Step(
            lm=peft_lm,
            forget=collate(examples, pad_id, device),
            retain=retain.next() if retain is not None else None,
            number=steps,
            epoch=epoch,
            retain_hooks=plugins.retain_hooks,
            forget_indices=indices,
        )
        tokens = step.forget.tokens + (step.retain.tokens if step.retain is not None else 0)
        # Checkpointed layers run their forward again during the backward pass, under the autocast state they
        # recorded: so the backward stays inside the checkpointing block, and outside autocast as ever.
        with checkpointed(base_lm, layers_to_checkpoint(base_lm, tokens)):
            with autocast(device, uses_autocast), disable_input_dtype_casting(peft_lm, active=uses_autocast):
                terms = objective.losses(step)
                for retain_term in plugins.retain_terms:
                    extra = retain_term(step)
                    terms.retain = extra if terms.retain is None else terms.retain + extra
            _backward(terms, trainable, plugins.gradient_filter)
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        if of_epoch:
            batches_done += 1
        if on_step is not None:
            on_step(len(examples))
        if schedule.max_steps is not None and steps >= schedule.max_steps:
            return stop_reason_after_evaluation() or "max_steps"
        if schedule.evaluate_every is not None and steps % schedule.evaluate_every == 0:
            reason = stop_reason_after_evaluation()
            if reason is not None:
                return reason
        if snapshot_due():
            snapshot(epoch)
        return None

    peft_lm.train()
    try:
        if resume is None:
            snapshot(0)
        for epoch in range(first_epoch, schedule.epochs):
            examples = objective.forget_examples(epoch, forget_examples)
            batches = shuffled_batches(len(examples), schedule.batch_size, f"{seed}/order/{epoch}")
            # A resumed run skips the batches its snapshot's epoch had trained on already.
            batches_done = batches_done if epoch == first_epoch else 0
            for batch_indices in batches[batches_done:]:
                # Steps the objective interleaves (LWF's unlearning steps) are decided by the step number alone,
                # so a run resumed between one and the epoch's next batch takes it again.
                while (interleaved := objective.interleaved_examples(steps)) is not None:
                    reason = optimise(interleaved, (), epoch, of_epoch=False)
                    if reason is not None:
                        return TrainingResult(steps, reason)
                reason = optimise([examples[i] for i in batch_indices], batch_indices, epoch, of_epoch=True)
                if reason is not None:
                    return TrainingResult(steps, reason)
            if schedule.evaluate_every is None:
                reason = stop_reason_after_evaluation()
                if reason is not None:
                    return TrainingResult(steps, reason)
        return TrainingResult(steps, "epochs")
    finally:
        peft_lm.eval()


def _adamw(parameters: Sequence[torch.Tensor], learning_rate: float) -> torch.optim.AdamW:
    """AdamW as one fused kernel over every LoRA tensor (hundreds of small ones: one loop step each otherwise).

    torch's fused AdamW runs on CPU and CUDA; elsewhere the multi-tensor (foreach) one. Same update either way.
    """
    device = parameters[0].device.type if parameters else "cpu"
    if device in ("cpu", "cuda"):
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=WEIGHT_DECAY, fused=True)
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=WEIGHT_DECAY, foreach=True)


def _backward(terms: LossTerms, trainable: Sequence[torch.Tensor], gradient_filter: GradientFilter | None) -> None:
    """Accumulate the loss gradients; with a filter, the forget gradients are rewritten given the retain ones."""
    if gradient_filter is None or terms.retain is None:
        terms.total.backward()
        return
    retain_grads = torch.autograd.grad(terms.retain, trainable, retain_graph=True, allow_unused=True)
    forget_grads = torch.autograd.grad(terms.forget, trainable, allow_unused=True)
    zeros = [torch.zeros_like(p) for p in trainable]
    retain_list = [g if g is not None else z for g, z in zip(retain_grads, zeros, strict=True)]
    forget_list = [g if g is not None else z for g, z in zip(forget_grads, zeros, strict=True)]
    filtered = gradient_filter(forget_list, retain_list)
    for parameter, forget_grad, retain_grad in zip(trainable, filtered, retain_list, strict=True):
        parameter.grad = forget_grad + retain_grad
