"""What a method is to the training loop: an `Objective` that turns a `Step` (the LM, a forget batch, a retain batch
when it uses one, and the reference LM) into `LossTerms(forget, retain)`, and the `Plugins` any ascent-style method
can switch on (see `worker.engine.methods.plugins`): noise on retain forwards, extra retain terms, a gradient filter.

The reference LM is the LM as it was right before training started, as the published methods (NPO, DPO, RMU, a KL
to the reference) define it: the fine-tuned LM when the job fine-tuned first (a frozen second adapter slot holds
that adapter, `lm.lora.reference_adapter`), the base LM (every adapter disabled) otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lethe.rows import Row
from worker.engine.lm.head import head_only_at
from worker.engine.lm.lora import reference_lm
from worker.engine.training.batches import IGNORE, Batch, Example
from worker.engine.training.logprobs import TargetLogits
from worker.engine.training.packing import packing_pays, packs_correctly


class ForwardHook(Protocol):
    """A plug-in that changes the LM's forward passes on forget or retain batches (e.g. noise on a layer)."""

    def __call__(self, lm: PeftModel) -> contextlib.AbstractContextManager[Any]: ...


@dataclass
class Step:
    """What an objective sees at one optimiser step."""

    lm: PeftModel
    # The step's batch: of the examples the epoch passes over (the forget rows' for every method but LWF, whose
    # epochs pass over its learning data), or of those the objective interleaves (LWF's generated texts).
    forget: Batch
    retain: Batch | None
    number: int
    epoch: int
    retain_hooks: Sequence[ForwardHook] = ()
    # The forget batch's rows: indices into the epoch's forget examples (to pair each row with data of its own);
    # none on a step the objective interleaved.
    forget_indices: Sequence[int] = ()

    def target_logits(self, batch: Batch) -> TargetLogits:
        """The trained LM's logits at `batch`'s target positions only (what the losses read; see `TargetLogits`),
        fed packed, without padding, where the LM allows it (retain batches pass through the retain hooks)."""
        with self._hooked(batch) as lm:
            return _target_forward(lm, batch)

    def outputs(self, batch: Batch, **kwargs: Any) -> Any:
        """The trained LM's full output on `batch` (e.g. with output_hidden_states=True), on the padded batch, so
        that per-position states (also those read by hooks on its blocks) keep the batch's shape."""
        with self._hooked(batch) as lm:
            return lm(**{**batch.lm_inputs(), **kwargs})

    @contextlib.contextmanager
    def _hooked(self, batch: Batch) -> Iterator[PeftModel]:
        """The trained LM, with the retain hooks on it while it runs on the retain batch."""
        with contextlib.ExitStack() as stack:
            for hook in self.retain_hooks if batch is self.retain else ():
                stack.enter_context(hook(self.lm))
            yield self.lm

    @contextlib.contextmanager
    def reference(self) -> Iterator[PeftModel]:
        """The reference LM (the LM before training: see the module's docstring), without gradients."""
        with reference_lm(self.lm) as lm:
            yield lm

    def reference_outputs(self, batch: Batch, **kwargs: Any) -> Any:
        """The reference LM's full output on `batch` (never hooked, never differentiated), on the padded batch."""
        with self.reference() as lm:
            return lm(**{**batch.lm_inputs(), **kwargs})

    def reference_target_logits(self, batch: Batch) -> TargetLogits:
        """The reference LM's logits at `batch`'s target positions only (as `target_logits`)."""
        with self.reference() as lm:
            return _target_forward(lm, batch)


def _packs(lm: PeftModel, batch: Batch) -> bool:
    """Whether `batch` is fed to `lm` packed: the LM packs correctly and packing costs less than padding
    (`packing.packing_pays`)."""
    return (
        bool(batch.examples)
        and packing_pays(lm, batch.size, int(batch.input_ids.shape[1]), batch.tokens)
        and packs_correctly(lm)
        and batch.packed is not None
    )


def _target_forward(lm: PeftModel, batch: Batch) -> TargetLogits:
    """`lm`'s logits at `batch`'s target positions, where the LM head runs alone: fed packed where `_packs`,
    otherwise padded, the head then taking the target positions out of the batch's last `keep` columns (as scoring
    does, `head.head_only_at`)."""
    packed = batch.packed if _packs(lm, batch) else None
    if packed is not None:
        logits = lm(**packed.lm_inputs()).logits
        targets, rows = packed.target_ids, packed.target_rows
    else:
        # Position t of the kept columns predicts token t + 1; the last column predicts none of the batch.
        kept = batch.labels[:, -batch.keep :]
        rows, columns = (kept[:, 1:] != IGNORE).nonzero(as_tuple=True)
        with head_only_at(lm.get_output_embeddings(), (rows, columns)):
            logits = lm(**batch.lm_inputs()).logits
        targets = kept[rows, columns + 1]
    if logits.shape[:2] != (1, len(targets)):
        raise ValueError(f"{type(lm).__name__} does not compute its logits with its output embeddings module")
    return TargetLogits(logits[0], targets, rows, batch.size)


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
    """What an objective may prepare from before the first step (tokenizer, rows, the LM, the seed).

    `lm` holds the weights training starts from (a resumed run's too: `train` loads the snapshot's after `prepare`).
    """

    lm: PeftModel
    tokenizer: PreTrainedTokenizerBase
    forget_rows: Sequence[Row]
    retain_rows: Sequence[Row]
    limit: int
    seed: int

    @contextlib.contextmanager
    def reference(self) -> Iterator[PeftModel]:
        """The reference LM, as `Step.reference` gives it, without gradients."""
        with reference_lm(self.lm) as lm:
            yield lm


class Objective:
    """Fine-tuning: minimise the NLL of the forget rows' true targets. Methods override what differs."""

    uses_retain: bool = False

    def prepare(self, context: TrainContext) -> None:
        """Called once before training (e.g. to generate texts or tokenize a refusal set)."""

    def forget_examples(self, epoch: int, examples: list[Example]) -> list[Example]:
        """The examples `epoch` passes over, a batch a step (`Step.forget`): the forget rows' (random_label
        replaces their targets; LWF passes over its learning data instead)."""
        return examples

    def interleaved_examples(self, number: int) -> list[Example] | None:
        """The batch optimiser step `number` (from 0) trains on instead of the epoch's next one (LWF's unlearning
        steps), or None: it takes the epoch's next batch. A function of `number` alone, so that a resumed run
        interleaves as the uninterrupted one did."""
        return None

    def outcome(self, steps: int) -> dict[str, Any]:
        """What the method has to say about a run that took `steps` optimiser steps, beyond the metrics (LWF: the
        forget rows it never unlearned); {} when nothing."""
        return {}

    def losses(self, step: Step) -> LossTerms:
        return LossTerms(forget=step.target_logits(step.forget).mean_nll())


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
