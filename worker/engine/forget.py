"""One forget run: evaluate the base LM, optionally fine-tune, forget with a method, evaluate, probe."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel

from worker.engine.data import ChoiceRow, chance
from worker.engine.lm import LoadedLM
from worker.engine.methods.implementations import METHOD_IMPLEMENTATIONS
from worker.engine.methods.params import METHODS, MethodParams
from worker.engine.probes import probe_accuracy_by_layer
from worker.engine.scoring import CausalLM, ChoiceScores, score_choices
from worker.engine.training import ChoiceObjective, TrainingResult, attach_lora, train_on_choices

FORGET_TRAIN = "forget_train"
FORGET_HELDOUT = "forget_heldout"
RETAIN_PREFIX = "retain:"

# Rough cost of training on one row relative to scoring one pair: forward + backward ≈ 3 forwards.
_TRAIN_COST = 3.0
# Rough cost of fitting one stage's layer probes, relative to scoring one pair, per pair of forget data.
_PROBE_COST = 0.5


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning on the true answers of forget-train before forgetting (the seed paper's protocol)."""

    epochs: int
    learning_rate: float

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"finetune epochs must be >= 1, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"finetune learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class ForgetPlan:
    """What to run: the method and its raw params, optional fine-tune, whether to probe, the seed."""

    method: str
    method_params: dict[str, Any]
    finetune: FinetuneConfig | None
    probe: bool
    seed: int


@dataclass(frozen=True)
class MetricValue:
    """One measurement; `layer` is set for probes, `step` for points measured during forgetting."""

    stage: str
    split: str
    name: str
    value: float
    layer: int | None = None
    step: int | None = None


@dataclass
class ForgetOutcome:
    """Metrics of every stage, the LM with its trained LoRA adapter, optimiser steps and why forgetting ended."""

    metrics: list[MetricValue]
    peft_lm: PeftModel
    steps: int
    stop_reason: str


class _Progress:
    """Reports the estimated fraction of the run done; the estimate shrinks when forgetting stops early."""

    def __init__(self, on_progress: Callable[[str, float], None], total: float) -> None:
        self.on_progress = on_progress
        self.total = total
        self.done = 0.0

    def advance(self, stage: str, units: float) -> None:
        self.done += units
        self.on_progress(stage, min(self.done / self.total, 1.0))

    def drop(self, units: float) -> None:
        """Remove work that will not happen after all."""
        self.total = max(self.total - units, self.done, 1e-9)


def run_forget(
    base: LoadedLM,
    plan: ForgetPlan,
    forget_train: Sequence[ChoiceRow],
    forget_heldout: Sequence[ChoiceRow],
    retain: dict[str, list[ChoiceRow]],
    on_progress: Callable[[str, float], None],
) -> ForgetOutcome:
    """Run `plan` on a private copy of the base LM and measure accuracy, forget gap/ratio and probes.

    on_progress(stage, fraction) reports stage in evaluating|finetuning|forgetting|probing and the estimated
    fraction of the whole run done (non-decreasing, 1.0 at the end).
    """
    params = METHODS.get(plan.method).parse(plan.method_params)
    objective = METHOD_IMPLEMENTATIONS.get(plan.method)(params, plan.seed)
    if not forget_train or not forget_heldout:
        raise ValueError("forget_train and forget_heldout must both be non-empty")
    splits: dict[str, Sequence[ChoiceRow]] = {FORGET_TRAIN: forget_train, FORGET_HELDOUT: forget_heldout}
    splits.update({f"{RETAIN_PREFIX}{name}": rows for name, rows in retain.items()})
    run = _Run(base, plan, params, splits, on_progress)

    torch.manual_seed(plan.seed)  # LoRA's A matrices are drawn from torch's global generator
    lm = copy.deepcopy(base.lm)  # the cached base LM stays pristine
    before_stage = "finetuned" if plan.finetune else "base"
    before = run.evaluate(lm, "base", collect_hidden=plan.probe and before_stage == "base")
    peft_lm = attach_lora(lm, params.lora_rank, params.lora_alpha)
    if plan.finetune:
        run.finetune(peft_lm, plan.finetune)
        before = run.evaluate(peft_lm, "finetuned", collect_hidden=plan.probe)
    if plan.probe:
        run.probe(before_stage, before)

    result = run.forget(peft_lm, objective)

    after = run.evaluate(peft_lm, "forgotten", collect_hidden=plan.probe)
    for split, scores in after.items():
        # forget ratio = (acc_before − acc_after) / (acc_before − chance): the share of the above-chance
        # accuracy that forgetting removed. Undefined when the LM was not above chance before: omitted.
        headroom = before[split].accuracy - run.chances[split]
        if headroom > 0:
            ratio = (before[split].accuracy - scores.accuracy) / headroom
            run.metrics.append(MetricValue("forgotten", split, "forget_ratio", ratio))
    if plan.probe:
        run.probe("forgotten", after)
    on_progress("probing" if plan.probe else "evaluating", 1.0)
    return ForgetOutcome(metrics=run.metrics, peft_lm=peft_lm, steps=result.steps, stop_reason=result.stop_reason)


class _Run:
    """The stages of one forget run, sharing its splits, metrics and progress estimate."""

    def __init__(
        self,
        base: LoadedLM,
        plan: ForgetPlan,
        params: MethodParams,
        splits: dict[str, Sequence[ChoiceRow]],
        on_progress: Callable[[str, float], None],
    ) -> None:
        self.tokenizer = base.tokenizer
        self.plan, self.params, self.splits = plan, params, splits
        self.chances = {split: chance(rows) for split, rows in splits.items()}
        self.metrics: list[MetricValue] = []

        # Work in units of "scoring one pair"; an estimate, corrected when forgetting stops early.
        self.pairs = {split: sum(len(row.choices) for row in rows) for split, rows in splits.items()}
        n_train = len(splits[FORGET_TRAIN])
        evaluations = 3 if plan.finetune else 2
        finetune_units = plan.finetune.epochs * n_train * _TRAIN_COST if plan.finetune else 0.0
        self.forget_rows = params.epochs * n_train
        if params.max_steps is not None:
            self.forget_rows = min(self.forget_rows, params.max_steps * params.batch_size)
        forget_units = self.forget_rows * _TRAIN_COST
        if params.stop_at_chance:
            forget_units += params.epochs * self.pairs[FORGET_TRAIN]
        self.probe_units = _PROBE_COST * (self.pairs[FORGET_TRAIN] + self.pairs[FORGET_HELDOUT]) if plan.probe else 0
        total = evaluations * sum(self.pairs.values()) + finetune_units + forget_units + 2 * self.probe_units
        self.progress = _Progress(on_progress, total)

    def evaluate(self, lm: CausalLM, stage: str, collect_hidden: bool) -> dict[str, ChoiceScores]:
        """Score every split; hidden states (for probes) only on the forget splits."""
        scores = {}
        for split, rows in self.splits.items():
            scores[split] = score_choices(
                lm,
                self.tokenizer,
                rows,
                self.params.batch_size,
                collect_hidden=collect_hidden and split in (FORGET_TRAIN, FORGET_HELDOUT),
                on_pairs_scored=lambda n: self.progress.advance("evaluating", n),
            )
            accuracy = scores[split].accuracy
            self.metrics.append(MetricValue(stage, split, "accuracy", accuracy))
            # forget gap = accuracy − chance (the seed paper's gap for binary tasks: accuracy − 0.5).
            self.metrics.append(MetricValue(stage, split, "forget_gap", accuracy - self.chances[split]))
        return scores

    def finetune(self, peft_lm: PeftModel, config: FinetuneConfig) -> None:
        """Teach the task first: minimise the NLL of the true answers of forget-train."""
        train_on_choices(
            peft_lm,
            self.tokenizer,
            self.splits[FORGET_TRAIN],
            ChoiceObjective(),
            learning_rate=config.learning_rate,
            epochs=config.epochs,
            batch_size=self.params.batch_size,
            seed=self.plan.seed,
            on_step=lambda n: self.progress.advance("finetuning", n * _TRAIN_COST),
        )

    def probe(self, stage: str, scores: dict[str, ChoiceScores]) -> None:
        """Per-layer probe accuracy on forget-heldout; frees the hidden states afterwards."""
        train, heldout = scores[FORGET_TRAIN], scores[FORGET_HELDOUT]
        assert train.hidden is not None
        per_layer = self.probe_units / train.hidden.shape[1]
        accuracies = probe_accuracy_by_layer(train, heldout, lambda: self.progress.advance("probing", per_layer))
        for layer, accuracy in enumerate(accuracies):
            self.metrics.append(MetricValue(stage, FORGET_HELDOUT, "probe_accuracy", accuracy, layer=layer))
        train.hidden = heldout.hidden = None

    def forget(self, peft_lm: PeftModel, objective: ChoiceObjective) -> TrainingResult:
        """Train with the method's objective until epochs, max_steps or (optionally) chance accuracy."""
        forget_train = self.splits[FORGET_TRAIN]
        threshold = self.chances[FORGET_TRAIN] + self.params.chance_tolerance
        trained_rows = 0
        chance_checks = 0

        def count_rows(n: int) -> None:
            nonlocal trained_rows
            trained_rows += n
            self.progress.advance("forgetting", n * _TRAIN_COST)

        def reached_chance(epoch: int, steps: int) -> bool:
            nonlocal chance_checks
            chance_checks += 1
            scores = score_choices(
                peft_lm,
                self.tokenizer,
                forget_train,
                self.params.batch_size,
                on_pairs_scored=lambda n: self.progress.advance("forgetting", n),
            )
            # A point of the forgetting curve, tagged with the optimiser steps taken so far.
            self.metrics.append(MetricValue("forgotten", FORGET_TRAIN, "accuracy", scores.accuracy, step=steps))
            return scores.accuracy <= threshold

        result = train_on_choices(
            peft_lm,
            self.tokenizer,
            forget_train,
            objective,
            learning_rate=self.params.learning_rate,
            epochs=self.params.epochs,
            batch_size=self.params.batch_size,
            seed=self.plan.seed,
            max_steps=self.params.max_steps,
            after_epoch=reached_chance if self.params.stop_at_chance else None,
            on_step=count_rows,
        )
        self.progress.drop((self.forget_rows - trained_rows) * _TRAIN_COST)
        if self.params.stop_at_chance:
            self.progress.drop((self.params.epochs - chance_checks) * self.pairs[FORGET_TRAIN])
        return result
