"""One forget run: evaluate the base LM, optionally fine-tune, forget with a method (evaluating as it trains,
stopping at the target, the step budget or the utility floor), evaluate again, probe.

Every split is evaluated with the metrics of its kind (choice|qa|text); the forget splits also get the
membership-inference AUCs (members = forget-train, non-members = forget-heldout) and PrivLeak relative to the base
LM. Aggregates become `MetricValue`s; per-example values are kept in `ForgetOutcome.per_example` for the object
store.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel

from lethe.methods import METHODS, MethodParams
from lethe.rows import ChoiceRow, QARow, Row, TextRow, chance, kind_of
from worker.engine.lm.inputs import max_length
from worker.engine.lm.load import CausalLM, LoadedLM
from worker.engine.lm.lora import LoraState, attach_lora, lora_state
from worker.engine.methods.implementations import build_objective
from worker.engine.methods.plugins import build_plugins
from worker.engine.metrics.choice import correct_probabilities
from worker.engine.metrics.choice_scores import ChoiceScores, score_choices
from worker.engine.metrics.evaluate import (
    PRIMARY_METRIC,
    evaluate_perplexity,
    evaluate_qa,
    evaluate_text,
    mia_metrics,
    mia_scores,
    primary_score,
    qa_progress_total,
)
from worker.engine.metrics.privacy import privleak
from worker.engine.metrics.probes import probe_accuracy_by_layer, qa_probe_scores
from worker.engine.metrics.values import MetricValue, SplitResult
from worker.engine.training.loop import Schedule, TrainingResult, train
from worker.engine.training.objective import Objective

FORGET_TRAIN = "forget_train"
FORGET_HELDOUT = "forget_heldout"
RETAIN_PREFIX = "retain:"
GENERAL_TEXT = "utility:general_text"


# Rough costs in "one forward over one example" units, for the progress estimate only.
_TRAIN_COST = 3.0
_GENERATE_COST = {"choice": 0.0, "qa": 8.0, "text": 16.0}


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning on the true targets of forget-train before forgetting (the seed paper's protocol)."""

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


@dataclass
class ForgetOutcome:
    """Metrics of every stage, per-example values, the LM with its trained adapter, steps and why forgetting ended.

    `per_example[stage][split][metric]` lists one value per row of the split (None where undefined).
    `before_forgetting` is the adapter's state right before forgetting (after the fine-tune, or LoRA's
    initialisation, whose zero B matrices leave the base LM unchanged): what audits compare against.
    """

    metrics: list[MetricValue]
    per_example: dict[str, dict[str, dict[str, list[float | None]]]]
    peft_lm: PeftModel
    before_forgetting: LoraState
    steps: int
    stop_reason: str


@dataclass
class _Evaluation:
    """One stage's evaluation: per split its result and, for probes, the choice scores with hidden states."""

    results: dict[str, SplitResult] = field(default_factory=dict)
    probe_scores: dict[str, ChoiceScores] = field(default_factory=dict)
    mia: dict[str, float] = field(default_factory=dict)

    def primary(self, split: str, kind: str) -> float:
        return self.results[split].aggregates[PRIMARY_METRIC[kind]]


def run_forget(
    base: LoadedLM,
    plan: ForgetPlan,
    forget_train: Sequence[Row],
    forget_heldout: Sequence[Row],
    retain: Mapping[str, Sequence[Row]],
    on_progress: Callable[[str, float], None],
    general_text: Sequence[TextRow] = (),
) -> ForgetOutcome:
    """Run `plan` on a private copy of the base LM and measure every stage.

    on_progress(stage, fraction) reports stage in evaluating|finetuning|forgetting|probing and the estimated
    fraction of the whole run done (non-decreasing, 1.0 at the end).
    """
    spec = METHODS.get(plan.method)
    params = spec.parse(plan.method_params)
    if not forget_train or not forget_heldout:
        raise ValueError("forget_train and forget_heldout must both be non-empty")
    kind = kind_of([*forget_train, *forget_heldout])
    if kind not in spec.kinds:
        raise ValueError(f"method {plan.method} cannot forget {kind} rows (it supports: {', '.join(spec.kinds)})")
    if any(not rows for rows in retain.values()):
        raise ValueError("every retain set needs at least one row")
    if params.utility_floor is not None and not retain:
        raise ValueError("utility_floor needs at least one retain set")
    objective = build_objective(plan.method, params, plan.seed)
    splits: dict[str, Sequence[Row]] = {FORGET_TRAIN: forget_train, FORGET_HELDOUT: forget_heldout}
    splits.update({f"{RETAIN_PREFIX}{name}": rows for name, rows in retain.items()})
    if general_text:
        splits[GENERAL_TEXT] = general_text
    run = _Run(base, plan, params, splits, on_progress)

    torch.manual_seed(plan.seed)  # LoRA's A matrices are drawn from torch's global generator
    lm = copy.deepcopy(base.lm)  # the cached base LM stays pristine
    before_stage = "finetuned" if plan.finetune else "base"
    base_evaluation = run.evaluate(lm, "base", collect_hidden=plan.probe and before_stage == "base")
    layers = params.adapted_layers(lm.config.num_hidden_layers)
    peft_lm = attach_lora(lm, params.lora_rank, params.lora_alpha, layers=layers)
    before = base_evaluation
    if plan.finetune:
        run.finetune(peft_lm, plan.finetune)
        before = run.evaluate(peft_lm, "finetuned", collect_hidden=plan.probe, base=base_evaluation)
    if plan.probe:
        run.probe(before_stage, before)

    before_forgetting = lora_state(peft_lm)
    result = run.forget(peft_lm, objective, before)

    after = run.evaluate(peft_lm, "forgotten", collect_hidden=plan.probe, base=base_evaluation)
    for split in (FORGET_TRAIN, FORGET_HELDOUT, *[s for s in splits if s.startswith(RETAIN_PREFIX)]):
        if run.kinds[split] != "choice":
            continue
        # forget ratio = (acc_before − acc_after) / (acc_before − chance): the share of the above-chance
        # accuracy that forgetting removed. Undefined when the LM was not above chance before: omitted.
        headroom = before.primary(split, "choice") - run.chances[split]
        if headroom > 0:
            ratio = (before.primary(split, "choice") - after.primary(split, "choice")) / headroom
            run.metrics.append(MetricValue("forgotten", split, "forget_ratio", ratio))
    if plan.probe:
        run.probe("forgotten", after)
    on_progress("probing" if plan.probe else "evaluating", 1.0)
    return ForgetOutcome(
        metrics=run.metrics,
        per_example=run.per_example,
        peft_lm=peft_lm,
        before_forgetting=before_forgetting,
        steps=result.steps,
        stop_reason=result.stop_reason,
    )


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


class _Run:
    """The stages of one forget run, sharing its splits, metrics and progress estimate."""

    def __init__(
        self,
        base: LoadedLM,
        plan: ForgetPlan,
        params: MethodParams,
        splits: dict[str, Sequence[Row]],
        on_progress: Callable[[str, float], None],
    ) -> None:
        self.tokenizer = base.tokenizer
        self.limit = max_length(base.lm, base.tokenizer)
        self.plan, self.params, self.splits = plan, params, splits
        self.kinds = {split: kind_of(rows) for split, rows in splits.items()}
        self.chances = {
            split: chance([row for row in rows if isinstance(row, ChoiceRow)])
            for split, rows in splits.items()
            if self.kinds[split] == "choice"
        }
        self.metrics: list[MetricValue] = []
        self.per_example: dict[str, dict[str, dict[str, list[float | None]]]] = {}

        # Work in units of one forward over one example; an estimate, corrected when forgetting stops early.
        self.eval_units = {split: self._eval_units(split) for split in splits}
        n_train = len(splits[FORGET_TRAIN])
        evaluations = 3 if plan.finetune else 2
        finetune_units = plan.finetune.epochs * n_train * _TRAIN_COST if plan.finetune else 0.0
        self.forget_rows = params.epochs * n_train
        if params.max_steps is not None:
            self.forget_rows = min(self.forget_rows, params.max_steps * params.batch_size)
        self.checks = self._planned_checks(n_train)
        forget_units = self.forget_rows * _TRAIN_COST + self.checks * self._check_units()
        self.probe_units = 0.5 * (len(splits[FORGET_TRAIN]) + len(splits[FORGET_HELDOUT])) if plan.probe else 0.0
        total = evaluations * sum(self.eval_units.values()) + finetune_units + forget_units + 2 * self.probe_units
        self.progress = _Progress(on_progress, total)

    def _eval_units(self, split: str) -> float:
        """Sequences one evaluation of `split` passes through the LM (as its evaluator reports them)."""
        rows = self.splits[split]
        kind = self.kinds[split]
        if split == GENERAL_TEXT:
            return float(len(rows))
        if kind == "choice":
            pairs = sum(len(row.choices) for row in rows if isinstance(row, ChoiceRow))
            # The forget splits' MIA scores take one more pass over their (prompt, answer) pairs.
            return float(pairs + (len(rows) if split in (FORGET_TRAIN, FORGET_HELDOUT) else 0))
        if kind == "qa":
            return float(qa_progress_total([row for row in rows if isinstance(row, QARow)]))
        return 2.0 * len(rows)

    def _planned_checks(self, n_train: int) -> int:
        steps_per_epoch = -(-n_train // self.params.batch_size)
        steps = min(self.params.epochs * steps_per_epoch, self.params.max_steps or 10**9)
        if self.params.evaluate_every is None:
            return -(-steps // steps_per_epoch)
        return steps // self.params.evaluate_every

    def _check_units(self) -> float:
        """One evaluation during training: the primary score of every split but the general text."""
        return sum(
            len(rows) * (len(rows[0].choices) if isinstance(rows[0], ChoiceRow) else 1.0)
            for split, rows in self.splits.items()
            if split != GENERAL_TEXT
        )

    def _record(self, stage: str, split: str, result: SplitResult, step: int | None = None) -> None:
        for name, value in result.aggregates.items():
            self.metrics.append(MetricValue(stage, split, name, value, step=step))
        if step is None:
            self.per_example.setdefault(stage, {})[split] = result.per_example

    def _evaluate_split(
        self, lm: CausalLM, split: str, collect_hidden: bool
    ) -> tuple[SplitResult, ChoiceScores | None]:
        """The split's metrics (with MIA scores on the forget splits) and, for probes, choice scores with states."""
        rows = self.splits[split]
        kind = self.kinds[split]
        batch_size = self.params.batch_size

        def advance(n: int) -> None:
            self.progress.advance("evaluating", n)

        if split == GENERAL_TEXT:
            text_rows = [row for row in rows if isinstance(row, TextRow)]
            return evaluate_perplexity(lm, self.tokenizer, text_rows, batch_size, on_progress=advance), None
        if kind == "choice":
            choice_rows = [row for row in rows if isinstance(row, ChoiceRow)]
            scores = score_choices(
                lm, self.tokenizer, choice_rows, batch_size, collect_hidden=collect_hidden, on_pairs_scored=advance
            )
            result = _choice_result(scores, self.chances[split])
            if split in (FORGET_TRAIN, FORGET_HELDOUT):
                result.mia = mia_scores(lm, self.tokenizer, choice_rows, batch_size, on_progress=advance)
            return result, scores if collect_hidden else None
        if kind == "qa":
            qa_rows = [row for row in rows if isinstance(row, QARow)]
            result = evaluate_qa(lm, self.tokenizer, qa_rows, batch_size, on_progress=advance)
            probe_scores = qa_probe_scores(lm, self.tokenizer, qa_rows, batch_size) if collect_hidden else None
            return result, probe_scores
        text_rows = [row for row in rows if isinstance(row, TextRow)]
        return evaluate_text(lm, self.tokenizer, text_rows, batch_size, on_progress=advance), None

    def evaluate(self, lm: CausalLM, stage: str, collect_hidden: bool, base: _Evaluation | None = None) -> _Evaluation:
        """Every split's metrics at `stage`, the forget splits' MIA AUCs and (after the base) PrivLeak."""
        evaluation = _Evaluation()
        for split in self.splits:
            is_forget = split in (FORGET_TRAIN, FORGET_HELDOUT)
            result, probe_scores = self._evaluate_split(lm, split, collect_hidden and is_forget)
            evaluation.results[split] = result
            if probe_scores is not None:
                evaluation.probe_scores[split] = probe_scores
            self._record(stage, split, result)
        # Membership inference: can the stage tell forget-train (members) from forget-heldout (non-members)?
        members, nonmembers = evaluation.results[FORGET_TRAIN].mia, evaluation.results[FORGET_HELDOUT].mia
        evaluation.mia = mia_metrics(members, nonmembers)
        for name, value in evaluation.mia.items():
            self.metrics.append(MetricValue(stage, FORGET_TRAIN, name, value))
            if base is not None and base.mia[name] > 0:
                # PrivLeak (MUSE) relative to the base LM, the only reference Lethe has (no retrained LM);
                # undefined (omitted) when the base's AUC is 0.
                leak = privleak(value, base.mia[name])
                self.metrics.append(MetricValue(stage, FORGET_TRAIN, name.replace("mia_auc", "privleak"), leak))
        for split in (FORGET_TRAIN, FORGET_HELDOUT):
            for attack, scores in evaluation.results[split].mia.items():
                self.per_example[stage][split][f"mia_{attack}"] = list(scores)
        return evaluation

    def primary_scores(self, lm: CausalLM) -> dict[str, float]:
        """The primary score of every split but the general text, cheaply (teacher-forced, no generation)."""
        scores = {}
        for split, rows in self.splits.items():
            if split == GENERAL_TEXT:
                continue
            scores[split] = primary_score(lm, self.tokenizer, rows, self.params.batch_size)
            self.progress.advance("forgetting", len(rows))
        return scores

    def finetune(self, peft_lm: PeftModel, config: FinetuneConfig) -> None:
        """Teach the task first: minimise the NLL of the true targets of forget-train."""
        train(
            peft_lm,
            self.tokenizer,
            Objective(),
            self.splits[FORGET_TRAIN],
            [],
            Schedule(learning_rate=config.learning_rate, epochs=config.epochs, batch_size=self.params.batch_size),
            seed=self.plan.seed,
            limit=self.limit,
            on_step=lambda n: self.progress.advance("finetuning", n * _TRAIN_COST),
        )

    def probe(self, stage: str, evaluation: _Evaluation) -> None:
        """Per-layer probe accuracy on forget-heldout; frees the hidden states afterwards."""
        train_scores = evaluation.probe_scores.get(FORGET_TRAIN)
        heldout_scores = evaluation.probe_scores.get(FORGET_HELDOUT)
        if train_scores is None or heldout_scores is None or train_scores.hidden is None:
            return  # qa rows without perturbed answers have nothing to probe
        per_layer = self.probe_units / train_scores.hidden.shape[1]
        accuracies = probe_accuracy_by_layer(
            train_scores, heldout_scores, lambda: self.progress.advance("probing", per_layer)
        )
        for layer, accuracy in enumerate(accuracies):
            self.metrics.append(MetricValue(stage, FORGET_HELDOUT, "probe_accuracy", accuracy, layer=layer))
        evaluation.probe_scores.clear()

    def forget(self, peft_lm: PeftModel, objective: Objective, before: _Evaluation) -> TrainingResult:
        """Train with the method's objective, evaluating every `evaluate_every` steps (or epoch) to decide to stop.

        Stop reasons: `target` (forget-train at its target), `utility_floor` (retain dropped more than the floor:
        the best checkpoint that kept it is restored), `max_steps`, `epochs`.
        """
        params = self.params
        kind = self.kinds[FORGET_TRAIN]
        target = (
            self.chances[FORGET_TRAIN] if kind == "choice" else before.primary(FORGET_HELDOUT, kind)
        ) + params.target_tolerance
        retain_splits = [split for split in self.splits if split.startswith(RETAIN_PREFIX)]
        retain_before = {split: before.primary(split, self.kinds[split]) for split in retain_splits}
        checkpoints = _Checkpoints(peft_lm)
        checkpoints.offer(before.primary(FORGET_TRAIN, kind))  # forgetting nothing always keeps the floor
        trained_rows = 0
        checks = 0

        def count_rows(n: int) -> None:
            nonlocal trained_rows
            trained_rows += n
            self.progress.advance("forgetting", n * _TRAIN_COST)

        def check(steps: int) -> str | None:
            nonlocal checks
            checks += 1
            scores = self.primary_scores(peft_lm)
            for split, value in scores.items():
                self.metrics.append(
                    MetricValue("forgotten", split, PRIMARY_METRIC[self.kinds[split]], value, step=steps)
                )
            if params.utility_floor is not None and retain_splits:
                drop = sum(retain_before[s] - scores[s] for s in retain_splits) / len(retain_splits)
                if drop > params.utility_floor:
                    checkpoints.restore_best()
                    return "utility_floor"
                checkpoints.offer(scores[FORGET_TRAIN])
            if params.stop_at_target and scores[FORGET_TRAIN] <= target:
                return "target"
            return None

        result = train(
            peft_lm,
            self.tokenizer,
            objective,
            self.splits[FORGET_TRAIN],
            [row for split in retain_splits for row in self.splits[split]],
            Schedule(
                learning_rate=params.learning_rate,
                epochs=params.epochs,
                batch_size=params.batch_size,
                max_steps=params.max_steps,
                evaluate_every=params.evaluate_every,
            ),
            seed=self.plan.seed,
            limit=self.limit,
            plugins=build_plugins(params),
            evaluate=check,
            on_step=count_rows,
        )
        self.progress.drop((self.forget_rows - trained_rows) * _TRAIN_COST)
        self.progress.drop(max(self.checks - checks, 0) * self._check_units())
        return result


class _Checkpoints:
    """The LoRA weights of the most-forgotten evaluation that kept the utility floor (lowest forget score)."""

    def __init__(self, peft_lm: PeftModel) -> None:
        self.peft_lm = peft_lm
        self.best_score = float("inf")
        self.best: dict[str, torch.Tensor] = {}

    def offer(self, forget_score: float) -> None:
        if forget_score < self.best_score:
            self.best_score = forget_score
            self.best = {n: p.detach().clone() for n, p in self.peft_lm.named_parameters() if p.requires_grad}

    def restore_best(self) -> None:
        with torch.no_grad():
            for name, parameter in self.peft_lm.named_parameters():
                if name in self.best:
                    parameter.copy_(self.best[name])


def _choice_result(scores: ChoiceScores, chance_accuracy: float) -> SplitResult:
    """accuracy, forget_gap (accuracy − chance: the seed paper's gap) and correct_probability, per row too."""
    probabilities = correct_probabilities(scores)
    correct = [1.0 if c else 0.0 for c in scores.correct]
    accuracy = scores.accuracy
    return SplitResult(
        aggregates={
            "accuracy": accuracy,
            "forget_gap": accuracy - chance_accuracy,
            "correct_probability": sum(probabilities) / len(probabilities),
        },
        per_example={"correct": list(correct), "correct_probability": list(probabilities)},
    )
