"""LoRA attachment, tokenized examples and batches, and the one training loop fine-tuning and every method share.

A method is an `Objective`: given a `Step` (the LM, a forget batch, a retain batch when it uses one, and the
reference = the same LM with its adapter disabled) it returns `LossTerms(forget, retain)`. The loop sums them,
steps AdamW on the LoRA parameters, and runs the plug-ins that any ascent-style method can switch on
(see `worker.engine.methods.plugins`): noise on retain forwards, a retain-KL term, gradient projection.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lethe.rows import Row
from worker.engine.precision import autocast
from worker.engine.scoring import encode_pair, pair_sequence

# HF TrainingArguments defaults: no weight decay, gradients clipped to norm 1 (keeps gradient ascent,
# whose loss is unbounded below, from taking huge steps).
WEIGHT_DECAY = 0.0
MAX_GRAD_NORM = 1.0

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


def aligned_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The labels of the positions `logits` cover: the last ones when the LM kept only a batch's last columns."""
    return labels[:, labels.shape[1] - logits.shape[1] :]


def target_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of every target token, mask), both [batch, columns − 1]; position t's logits predict token t + 1.

    `logits` may cover only the last columns of `labels` (see `Batch.keep`).
    """
    targets = aligned_labels(logits, labels)[:, 1:]
    mask = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    gathered = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return gathered * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each sequence's target tokens, their count), both [batch]."""
    token_logprobs, mask = target_logprobs(logits, labels)
    return token_logprobs.sum(-1), mask.sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every target token of the batch (the HF causal-LM loss)."""
    summed, counts = sequence_logprob(logits, labels)
    return -summed.sum() / counts.sum().clamp(min=1)


class ForwardHook(Protocol):
    """A plug-in that changes the LM's forward passes on forget or retain batches (e.g. noise on a layer)."""

    def __call__(self, lm: PeftModel) -> contextlib.AbstractContextManager[Any]: ...


@dataclass
class Step:
    """What an objective sees at one optimiser step."""

    lm: PeftModel
    forget: Batch
    retain: Batch | None
    number: int
    epoch: int
    retain_hooks: Sequence[ForwardHook] = ()
    # The forget batch's rows: indices into the epoch's forget examples (to pair each row with data of its own).
    forget_indices: Sequence[int] = ()

    def logits(self, batch: Batch, **kwargs: Any) -> torch.Tensor:
        """The trained LM's logits on `batch` (retain batches pass through the retain hooks)."""
        return self.outputs(batch, **kwargs).logits

    def outputs(self, batch: Batch, **kwargs: Any) -> Any:
        """The trained LM's full output on `batch` (e.g. with output_hidden_states=True)."""
        hooks = self.retain_hooks if batch is self.retain else ()
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hook(self.lm))
            return self.lm(**{**batch.lm_inputs(), **kwargs})

    @contextlib.contextmanager
    def reference(self) -> Iterator[PeftModel]:
        """The reference LM: the same weights with the adapter disabled (no second copy), without gradients."""
        with torch.no_grad(), self.lm.disable_adapter():
            yield self.lm

    def reference_outputs(self, batch: Batch, **kwargs: Any) -> Any:
        """The reference LM's output on `batch` (never hooked, never differentiated)."""
        with self.reference() as lm:
            return lm(**{**batch.lm_inputs(), **kwargs})


@dataclass
class LossTerms:
    """The two parts of a method's loss: minimised together as forget + retain."""

    forget: torch.Tensor
    retain: torch.Tensor | None = None

    @property
    def total(self) -> torch.Tensor:
        return self.forget if self.retain is None else self.forget + self.retain


@dataclass
class TrainContext:
    """What an objective may prepare from before the first step (tokenizer, rows, the LM, the seed)."""

    lm: PeftModel
    tokenizer: PreTrainedTokenizerBase
    forget_rows: Sequence[Row]
    retain_rows: Sequence[Row]
    limit: int
    seed: int


class Objective:
    """Fine-tuning: minimise the NLL of the forget rows' true targets. Methods override what differs."""

    uses_retain: bool = False

    def prepare(self, context: TrainContext) -> None:
        """Called once before training (e.g. to generate texts or tokenize a refusal set)."""

    def forget_examples(self, epoch: int, examples: list[Example]) -> list[Example]:
        """The forget examples trained on in `epoch` (random_label replaces the targets)."""
        return examples

    def losses(self, step: Step) -> LossTerms:
        return LossTerms(forget=mean_nll(step.logits(step.forget), step.forget.labels))


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


class GradientFilter(Protocol):
    """A plug-in that rewrites the forget gradients given the retain gradients (e.g. projection)."""

    def __call__(self, forget_grads: list[torch.Tensor], retain_grads: list[torch.Tensor]) -> list[torch.Tensor]: ...


@dataclass
class Plugins:
    """The plug-ins a run switches on; see worker.engine.methods.plugins."""

    retain_hooks: list[ForwardHook] = field(default_factory=list)
    # Extra retain terms added to the method's own (e.g. KL to the reference on retain batches).
    retain_terms: list[Callable[[Step], torch.Tensor]] = field(default_factory=list)
    gradient_filter: GradientFilter | None = None

    @property
    def needs_retain(self) -> bool:
        return bool(self.retain_terms) or bool(self.retain_hooks) or self.gradient_filter is not None


def attach_lora(lm: PreTrainedModel, rank: int, alpha: int, layers: Sequence[int] | None = None) -> PeftModel:
    """Wrap `lm` with fresh LoRA adapters on every linear layer (the output head excluded), or those of `layers`."""
    target_modules: str | list[str] = "all-linear"
    if layers is not None:
        # peft takes `layers_to_transform` only with module names: those of every linear layer but the head.
        head = lm.get_output_embeddings()
        target_modules = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in lm.named_modules()
                if isinstance(m, torch.nn.Linear) and m is not head
            }
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=target_modules,
        layers_to_transform=list(layers) if layers is not None else None,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; not ours to fix, just noise.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(lm, config)


LoraState = dict[str, torch.Tensor]


def lora_state(peft_lm: PeftModel) -> LoraState:
    """A detached copy of the adapter's parameters, keyed by their names in `peft_lm`."""
    return {name: p.detach().clone() for name, p in peft_lm.named_parameters() if "lora_" in name}


def load_lora_state(peft_lm: PeftModel, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the adapter's parameters (every adapter parameter must be in it)."""
    parameters = {name: p for name, p in peft_lm.named_parameters() if "lora_" in name}
    missing = sorted(set(parameters) - set(state))
    if missing:
        raise ValueError(f"LoRA state lacks {len(missing)} adapter parameters, e.g. {missing[0]}")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name])


def _batches(n: int, batch_size: int, seed: str) -> list[list[int]]:
    """Seeded shuffled batches of indices into n items."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


class _RetainStream:
    """Retain batches drawn in seeded shuffled passes, one per optimiser step, for as long as training runs."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, pad_id: int, device: torch.device):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.pad_id, self.device = pad_id, device
        self.passes = 0
        self.pending: list[list[int]] = []

    def next(self) -> Batch:
        if not self.pending:
            self.pending = _batches(len(self.examples), self.batch_size, f"{self.seed}/retain/{self.passes}")
            self.passes += 1
        return collate([self.examples[i] for i in self.pending.pop(0)], self.pad_id, self.device)


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
) -> TrainingResult:
    """Train the LoRA parameters with AdamW on `objective`, in seeded shuffled batches of forget rows.

    `evaluate(steps)` runs every `schedule.evaluate_every` steps (or after every epoch) and returns a stop reason
    to end training, or None to go on. `on_step(rows_in_batch)` runs after every optimiser step.
    `mixed_precision`: forward passes under bf16 autocast (weights, gradients and AdamW stay fp32); None = as
    LETHE_PRECISION says (see `precision.mixed_precision_enabled`).
    """
    plugins = plugins or Plugins()
    if (objective.uses_retain or plugins.needs_retain) and not retain_rows:
        raise ValueError("this method needs retain rows (a retain dataset) and none were given")
    device = next(peft_lm.parameters()).device
    pad_id = tokenizer.pad_token_id
    objective.prepare(TrainContext(peft_lm, tokenizer, forget_rows, retain_rows, limit, seed))
    forget_examples = examples_of(tokenizer, forget_rows, limit)
    retain = None
    if objective.uses_retain or plugins.needs_retain:
        retain = _RetainStream(examples_of(tokenizer, retain_rows, limit), schedule.batch_size, seed, pad_id, device)

    trainable = [p for p in peft_lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=schedule.learning_rate, weight_decay=WEIGHT_DECAY)
    steps = 0

    def stop_reason_after_evaluation() -> str | None:
        peft_lm.eval()
        reason = evaluate(steps) if evaluate is not None else None
        peft_lm.train()
        return reason

    peft_lm.train()
    try:
        for epoch in range(schedule.epochs):
            examples = objective.forget_examples(epoch, forget_examples)
            for batch_indices in _batches(len(examples), schedule.batch_size, f"{seed}/order/{epoch}"):
                step = Step(
                    lm=peft_lm,
                    forget=collate([examples[i] for i in batch_indices], pad_id, device),
                    retain=retain.next() if retain is not None else None,
                    number=steps,
                    epoch=epoch,
                    retain_hooks=plugins.retain_hooks,
                    forget_indices=batch_indices,
                )
                with autocast(device, mixed_precision):
                    terms = objective.losses(step)
                    for retain_term in plugins.retain_terms:
                        extra = retain_term(step)
                        terms.retain = extra if terms.retain is None else terms.retain + extra
                _backward(terms, trainable, plugins.gradient_filter)
                torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                if on_step is not None:
                    on_step(len(batch_indices))
                if schedule.max_steps is not None and steps >= schedule.max_steps:
                    return TrainingResult(steps, stop_reason_after_evaluation() or "max_steps")
                if schedule.evaluate_every is not None and steps % schedule.evaluate_every == 0:
                    reason = stop_reason_after_evaluation()
                    if reason is not None:
                        return TrainingResult(steps, reason)
            if schedule.evaluate_every is None:
                reason = stop_reason_after_evaluation()
                if reason is not None:
                    return TrainingResult(steps, reason)
        return TrainingResult(steps, "epochs")
    finally:
        peft_lm.eval()


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
