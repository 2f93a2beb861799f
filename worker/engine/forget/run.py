"""One forget run: evaluate the base LM, optionally fine-tune, forget with a method (evaluating as it trains,
stopping at the target, the step budget or the utility floor), evaluate again, probe.

Every split is evaluated with the metrics of its kind (choice|qa|text); the forget splits also get the
membership-inference AUCs (members = forget-train, non-members = forget-heldout). Every stage after the base is
compared with the base LM on the same rows: PrivLeak of those AUCs, and for qa forget sets with perturbed answers
TOFU's forget quality. Aggregates become `MetricValue`s, one per (stage, split, name, layer), with their 95%
intervals seeded by the plan's seed; the scores measured during forgetting are `CurvePoint`s, apart; per-example
values are kept in `ForgetOutcome.per_example` for the object store. Whether forgetting reached its target is
`ForgetOutcome.forgetting`. A run hands its snapshots to `Snapshots.save` and can resume from one (see
`snapshot.py`).

A stacked run continues an earlier adapter (`ParentAdapter`): its LoRA starts from the parent's weights, measured
as the stage `parent` (the LM before forgetting, unless a fine-tune follows), and every stage also scores the
forget sets of the parent and its ancestors (`parent_forget_train:<name>`, `parent_forget_heldout:<name>`), so
that the run shows whether forgetting the new set brought an earlier one back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from peft import PeftModel

from lethe.forgetting import Forgetting, score_rises
from lethe.methods import METHODS, MethodParams
from lethe.rows import Row, TextRow, kind_of
from lethe.specs import FinetuneSpec
from worker.engine.forget.base_stage import BASE_STAGES, BaseStage, BaseStageCache, base_stage_key
from worker.engine.forget.progress import Progress
from worker.engine.forget.snapshot import ForgetSnapshot, Snapshots, Stage
from worker.engine.forget.splits import FORGET_HELDOUT, FORGET_SPLITS, FORGET_TRAIN, GENERAL_TEXT, Splits
from worker.engine.forget.stopping import StopRule
from worker.engine.lm.inputs import max_length
from worker.engine.lm.load import CausalLM, LoadedLM
from worker.engine.lm.lora import (
    LoraAdapter,
    LoraState,
    attached_lora,
    load_lora_state,
    lora_config,
    lora_state,
)
from worker.engine.methods.implementations import build_objective
from worker.engine.methods.plugins import build_plugins
from worker.engine.metrics.choice import forget_ratio
from worker.engine.metrics.choice_scores import ChoiceScores
from worker.engine.metrics.evaluate import (
    MIA_ATTACKS,
    PRIMARY_METRIC,
    MembershipReference,
    evaluate_perplexity,
    evaluate_split,
    membership_metrics,
    primary_score,
)
from worker.engine.metrics.intervals import Estimate, wilson
from worker.engine.metrics.probes import probe_accuracy_by_layer
from worker.engine.metrics.qa import forget_quality
from worker.engine.metrics.values import CurvePoint, MetricValue, PerExample, SplitResult
from worker.engine.training.loop import Schedule, TrainingResult, train
from worker.engine.training.objective import Objective
from worker.engine.training.snapshot import TrainingSnapshot

# The per-example key of every qa forget row's raw truth ratio R (TOFU paper; None without perturbed answers),
# stored beside the metrics' per-row values: forget quality compares its distributions, and an auditor can too.
TRUTH_RATIO_RAW = "truth_ratio_raw"


# The stage of a stacked run's starting point: the base LM with its parent adapter's weights.
PARENT_STAGE = "parent"


@dataclass(frozen=True)
class ParentAdapter:
    """An earlier adapter a stacked run continues: its LoRA weights (keyed as `lora_state` keys them: the run's
    LoRA must have the same rank, alpha and layers), and the forget sets of it and its ancestors as (forget-train,
    forget-heldout) rows by dataset name, split as each one's own job split them."""

    weights: LoraState
    forget_sets: Mapping[str, tuple[Sequence[Row], Sequence[Row]]]


class ParentMismatch(ValueError):
    """The parent adapter's LoRA is not the run's (other layers or rank): the run cannot start from it."""


@dataclass(frozen=True)
class ForgetPlan:
    """What to run: the method and its raw params, optional fine-tune, whether to probe, the seed."""

    method: str
    method_params: dict[str, Any]
    finetune: FinetuneSpec | None
    probe: bool
    seed: int


@dataclass
class ForgetOutcome:
    """Metrics of every stage, the forgetting curve, per-example values, the trained adapter, and whether forgetting
    reached its target (with its steps and why it stopped).

    `metrics` hold one value per (stage, split, name, layer): the `forgotten` ones are the stored adapter's.
    `curves` are the primary scores measured during forgetting, by step. `per_example[stage][split][metric]` lists
    one value per row of the split (None where undefined). `adapter` is the delivered adapter, its config and
    weights, off the LM (`lora.attached_lora` puts it back on the base LM to export or audit it).
    `before_forgetting` is the adapter's state right before forgetting (after the fine-tune, else a stacked run's
    parent adapter, else LoRA's initialisation, whose zero B matrices leave the base LM unchanged): what audits
    compare against. `method_outcome` is what the method says of its run beyond the metrics (`Objective.outcome`;
    lwf: the counts and indices of forget-train rows it never unlearned, `never_unlearned_rows` > 0 to be told the
    user); {} if none.
    """

    metrics: list[MetricValue]
    curves: list[CurvePoint]
    per_example: PerExample
    adapter: LoraAdapter
    before_forgetting: LoraState
    forgetting: Forgetting
    method_outcome: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Evaluation:
    """One stage's evaluation: per split its result and, for probes, the choice scores with hidden states."""

    results: dict[str, SplitResult] = field(default_factory=dict)
    probe_scores: dict[str, ChoiceScores] = field(default_factory=dict)

    def primary(self, split: str, kind: str) -> float:
        return self.results[split].estimates[PRIMARY_METRIC[kind]].value


def run_forget(
    base: LoadedLM,
    plan: ForgetPlan,
    forget_train: Sequence[Row],
    forget_heldout: Sequence[Row],
    retain: Mapping[str, Sequence[Row]],
    on_progress: Callable[[str, float], None],
    general_text: Sequence[TextRow] = (),
    snapshots: Snapshots | None = None,
    parent: ParentAdapter | None = None,
    base_stages: BaseStageCache | None = BASE_STAGES,
    on_curve: Callable[[CurvePoint], None] | None = None,
) -> ForgetOutcome:
    """Run `plan` on the base LM (its adapter attached in place, taken off again on return) and measure every stage.

    on_progress(stage, fraction) reports stage in evaluating|finetuning|forgetting|probing and the estimated
    fraction of the whole run done (non-decreasing, 1.0 at the end). `snapshots`: where to hand the run's
    snapshots, and one to resume from (taken by a run of the same plan on the same rows and base LM). `parent`: the
    adapter a stacked run continues (see the module's docstring). `base_stages`: where the base stage's scores are
    kept for the next job on the same base LM and rows (see `base_stage.py`; the worker process's cache by
    default); None = always evaluate it. on_curve(point) after each evaluation during forgetting, with forget-train's
    new point of the forgetting curve (the split the target is judged on).
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
    splits = Splits(forget_train, forget_heldout, retain, general_text, parent.forget_sets if parent else None)
    run = _Run(base, plan, params, splits, on_progress, snapshots, parent is not None, on_curve)
    resume = snapshots.resume if snapshots is not None else None

    torch.manual_seed(plan.seed)  # LoRA's A matrices are drawn from torch's global generator
    before_stage = "finetuned" if plan.finetune else PARENT_STAGE if parent else "base"
    base_evaluation = None
    if resume is None:
        base_evaluation = run.evaluate_base(
            base.lm, collect_hidden=plan.probe and before_stage == "base", cache=base_stages
        )
    else:
        run.restore(resume)
    layers = params.adapted_layers(base.lm.config.num_hidden_layers)
    config = lora_config(base.lm, params.lora_rank, params.lora_alpha, layers=layers)
    # The adapter goes onto the base LM itself, not a copy of it, and comes off again on the way out.
    with attached_lora(base.lm, config) as peft_lm:
        if resume is not None and resume.stage == "forget":
            # The objective prepares from the weights forgetting started with; train() then loads the snapshot's.
            load_lora_state(peft_lm, run.before_forgetting)
        else:
            before = base_evaluation
            if parent is not None:
                _start_from(peft_lm, parent.weights)
                if resume is None:  # a fine-tune snapshot holds the parent's evaluation already
                    before = run.evaluate(
                        peft_lm, PARENT_STAGE, collect_hidden=plan.probe and before_stage == PARENT_STAGE
                    )
            if plan.finetune:
                run.finetune(peft_lm, plan.finetune, resume.training if resume is not None else None)
                before = run.evaluate(peft_lm, "finetuned", collect_hidden=plan.probe)
            if before is None:
                raise ValueError("a fine-tune snapshot cannot resume a plan without a fine-tune")
            if plan.probe:
                run.probe(before_stage, before)
            run.before_scores = {split: before.primary(split, splits.kinds[split]) for split in splits.tracked}
            run.before_forgetting = lora_state(peft_lm)
            resume = None
        result = run.forget(peft_lm, objective, resume)

        after = run.evaluate(peft_lm, "forgotten", collect_hidden=plan.probe)
        adapter = LoraAdapter(config, lora_state(peft_lm))
    run.forget_ratios(after, before_stage)
    if plan.probe:
        run.probe("forgotten", after)
    on_progress("probing" if plan.probe else "evaluating", 1.0)
    method_outcome = objective.outcome(result.steps)
    forgetting = run.forgetting(after, result)
    return ForgetOutcome(
        metrics=run.metrics,
        curves=run.curves,
        per_example=run.per_example,
        adapter=adapter,
        before_forgetting=run.before_forgetting,
        forgetting=replace(forgetting, never_unlearned_rows=int(method_outcome.get("never_unlearned_rows", 0))),
        method_outcome=method_outcome,
    )


class _Run:
    """The stages of one forget run, sharing its splits, metrics and progress estimate."""

    def __init__(
        self,
        base: LoadedLM,
        plan: ForgetPlan,
        params: MethodParams,
        splits: Splits,
        on_progress: Callable[[str, float], None],
        snapshots: Snapshots | None,
        stacked: bool,
        on_curve: Callable[[CurvePoint], None] | None = None,
    ) -> None:
        self.tokenizer = base.tokenizer
        self.on_curve = on_curve
        self.stacked = stacked
        self.limit = max_length(base.lm, base.tokenizer)
        self.plan, self.params, self.splits, self.snapshots = plan, params, splits, snapshots
        self.metrics: list[MetricValue] = []
        self.curves: list[CurvePoint] = []
        self.per_example: PerExample = {}
        finetune_epochs = plan.finetune.epochs if plan.finetune else 0
        self.progress = Progress(splits, params, finetune_epochs, plan.probe, on_progress, parent=stacked)
        # What later stages read from earlier ones (besides the base stage's per-example values): right before
        # forgetting, the adapter and every tracked split's primary score.
        self.before_forgetting: LoraState = {}
        self.before_scores: dict[str, float] = {}

    def restore(self, snapshot: ForgetSnapshot) -> None:
        """Take up the measurements and progress of the run `snapshot` came from."""
        self.metrics, self.curves, self.per_example = snapshot.copy_measurements()
        self.before_forgetting = snapshot.before_forgetting
        self.before_scores = dict(snapshot.before_scores)
        self.progress.done = snapshot.progress_done

    def snapshot(self, stage: Stage, training: TrainingSnapshot) -> ForgetSnapshot:
        """The run at `training`'s point of `stage` (forgetting adds its own state)."""
        return ForgetSnapshot(
            stage=stage,
            training=training,
            metrics=list(self.metrics),
            curves=list(self.curves),
            per_example=copy.deepcopy(self.per_example),
            progress_done=self.progress.done,
            before_forgetting=self.before_forgetting,
            before_scores=dict(self.before_scores),
        )

    def evaluate_base(self, base_lm: CausalLM, collect_hidden: bool, cache: BaseStageCache | None) -> _Evaluation:
        """The base stage (`evaluate(base_lm, "base", ...)`), taken from `cache` when an earlier job evaluated the
        same base LM (the worker's cached one, no adapter on it) on the same rows with the same settings, and kept
        there."""
        if cache is None:
            return self.evaluate(base_lm, "base", collect_hidden)
        key = base_stage_key(
            base_lm,
            self.splits.rows,
            batch_size=self.params.batch_size,
            seed=self.plan.seed,
            collect_hidden=collect_hidden,
        )
        cached = cache.get(key)
        if cached is not None:
            self.metrics.extend(cached.metrics)
            self.per_example["base"] = cached.per_example
            self.progress.advance("evaluating", cached.progress_units)
            evaluation: _Evaluation = cached.evaluation
            return evaluation
        metrics_before, done_before = len(self.metrics), self.progress.done
        evaluation = self.evaluate(base_lm, "base", collect_hidden)
        stage = BaseStage(
            metrics=self.metrics[metrics_before:],
            per_example=self.per_example["base"],
            evaluation=evaluation,
            progress_units=self.progress.done - done_before,
        )
        cache.put(key, stage)
        return evaluation

    def evaluate(self, lm: CausalLM, stage: str, collect_hidden: bool) -> _Evaluation:
        """Every split's metrics at `stage` and the forget splits' MIA AUCs; after the base stage also their PrivLeak
        against the base LM (`base_reference`) and TOFU's forget quality (`forget_quality`)."""
        evaluation = _Evaluation()

        def advance(n: int) -> None:
            self.progress.advance("evaluating", n)

        for split, rows in self.splits.rows.items():
            if split == GENERAL_TEXT:
                text_rows = [row for row in rows if isinstance(row, TextRow)]
                result = evaluate_perplexity(
                    lm, self.tokenizer, text_rows, self.params.batch_size, on_progress=advance, seed=self.plan.seed
                )
                probe_scores = None
            else:
                is_forget = split in FORGET_SPLITS
                result, probe_scores = evaluate_split(
                    lm,
                    self.tokenizer,
                    rows,
                    self.params.batch_size,
                    membership=is_forget,
                    collect_hidden=collect_hidden and is_forget,
                    on_progress=advance,
                    seed=self.plan.seed,
                )
            evaluation.results[split] = result
            if probe_scores is not None:
                evaluation.probe_scores[split] = probe_scores
            self.metrics.extend(MetricValue.of(stage, split, name, e) for name, e in result.estimates.items())
            self.per_example.setdefault(stage, {})[split] = result.per_example
        for split in FORGET_SPLITS:
            for attack, scores in evaluation.results[split].mia.items():
                self.per_example[stage][split][f"mia_{attack}"] = list(scores)
            if evaluation.results[split].truth_ratios:
                self.per_example[stage][split][TRUTH_RATIO_RAW] = list(evaluation.results[split].truth_ratios)
        # Membership inference: can the stage tell forget-train (members) from forget-heldout (non-members)?
        members, nonmembers = evaluation.results[FORGET_TRAIN].mia, evaluation.results[FORGET_HELDOUT].mia
        reference = self.base_reference() if stage != "base" else None
        for name, estimate in membership_metrics(members, nonmembers, self.plan.seed, reference).items():
            self.metrics.append(MetricValue.of(stage, FORGET_TRAIN, name, estimate))
        if stage != "base":
            self.forget_quality(stage)
        return evaluation

    def base_reference(self) -> MembershipReference:
        """The base LM's MIA scores of the forget splits: PrivLeak's reference. It never saw the forget set when the
        job fine-tuned it in (the fine-tune is what taught the rows); otherwise pretraining may have."""
        base = self.per_example["base"]
        return MembershipReference(
            members={attack: _floats(base[FORGET_TRAIN][f"mia_{attack}"]) for attack in MIA_ATTACKS},
            nonmembers={attack: _floats(base[FORGET_HELDOUT][f"mia_{attack}"]) for attack in MIA_ATTACKS},
            never_learned=self.plan.finetune is not None,
        )

    def forget_quality(self, stage: str) -> None:
        """TOFU's forget quality of forget-train: the KS-test p-value between this stage's and the base LM's truth
        ratios of its rows with perturbed answers. Only when the job fine-tuned the rows in, so that the base LM is
        a never-learned reference (TOFU's retain model); omitted otherwise, and for rows without perturbed answers.
        """
        ratios = self.per_example[stage][FORGET_TRAIN].get(TRUTH_RATIO_RAW)
        reference = self.per_example["base"][FORGET_TRAIN].get(TRUTH_RATIO_RAW)
        if self.plan.finetune is None or ratios is None or reference is None:
            return
        values = [r for r in ratios if r is not None]
        quality = forget_quality(values, [r for r in reference if r is not None])
        self.metrics.append(MetricValue(stage, FORGET_TRAIN, "forget_quality", quality, n=len(values)))

    def finetune(self, peft_lm: PeftModel, config: FinetuneSpec, resume: TrainingSnapshot | None) -> None:
        """Teach the task first: minimise the NLL of the true targets of forget-train."""
        snapshots = self.snapshots
        self.progress.started("finetuning")
        train(
            peft_lm,
            self.tokenizer,
            Objective(),
            self.splits.rows[FORGET_TRAIN],
            [],
            Schedule(learning_rate=config.learning_rate, epochs=config.epochs, batch_size=self.params.batch_size),
            seed=self.plan.seed,
            limit=self.limit,
            on_step=lambda n: self.progress.trained("finetuning", n),
            on_snapshot=(lambda t: snapshots.save(self.snapshot("finetune", t))) if snapshots is not None else None,
            snapshot_every=snapshots.every if snapshots is not None else 0,
            resume=resume,
        )

    def probe(self, stage: str, evaluation: _Evaluation) -> None:
        """Per-layer probe accuracy on forget-heldout, with its Wilson interval over the heldout rows; frees the
        hidden states afterwards."""
        train_scores = evaluation.probe_scores.get(FORGET_TRAIN)
        heldout_scores = evaluation.probe_scores.get(FORGET_HELDOUT)
        if train_scores is None or heldout_scores is None or train_scores.hidden is None:
            return  # qa rows without perturbed answers have nothing to probe
        per_layer = self.progress.probe_units / train_scores.hidden.shape[1]
        accuracies = probe_accuracy_by_layer(
            train_scores, heldout_scores, lambda: self.progress.advance("probing", per_layer)
        )
        n = len(heldout_scores.answers)
        for layer, accuracy in enumerate(accuracies):
            # accuracy = correct rows / n exactly, so rounding recovers the count of correct rows.
            low, high = wilson(round(accuracy * n), n)
            estimate = Estimate(accuracy, n, low, high, "wilson")
            self.metrics.append(MetricValue.of(stage, FORGET_HELDOUT, "probe_accuracy", estimate, layer=layer))
        evaluation.probe_scores.clear()

    def forget(self, peft_lm: PeftModel, objective: Objective, resume: ForgetSnapshot | None) -> TrainingResult:
        """Train with the method's objective, evaluating every `evaluate_every` steps (or epoch) to decide to stop.

        Stop reasons: `target` and `utility_floor` (see `StopRule`), `max_steps`, `epochs`.
        """
        params = self.params
        self.progress.started("forgetting")
        stop = StopRule(params, self.splits, self.before_scores, peft_lm)
        trained_rows = 0
        checks = 0
        if resume is not None:
            stop.checkpoints.best, stop.checkpoints.best_score = resume.best, resume.best_score
            trained_rows, checks = resume.trained_rows, resume.checks
        snapshots = self.snapshots

        def save(training: TrainingSnapshot) -> None:
            assert snapshots is not None
            snapshot = self.snapshot("forget", training)
            snapshot.best, snapshot.best_score = stop.checkpoints.best, stop.checkpoints.best_score
            snapshot.trained_rows, snapshot.checks = trained_rows, checks
            snapshots.save(snapshot)

        def count_rows(n: int) -> None:
            nonlocal trained_rows
            trained_rows += n
            self.progress.trained("forgetting", n)

        def check(steps: int) -> str | None:
            nonlocal checks
            checks += 1
            scores = {}
            for split in self.splits.tracked:
                rows = self.splits.rows[split]
                scores[split] = primary_score(peft_lm, self.tokenizer, rows, params.batch_size)
                self.progress.advance("forgetting", len(rows))
            for split, value in scores.items():
                self.curves.append(CurvePoint(split, PRIMARY_METRIC[self.splits.kinds[split]], steps, value))
                if split == FORGET_TRAIN and self.on_curve is not None:
                    self.on_curve(self.curves[-1])
            return stop(scores)

        result = train(
            peft_lm,
            self.tokenizer,
            objective,
            self.splits.rows[FORGET_TRAIN],
            [row for split in self.splits.retain for row in self.splits.rows[split]],
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
            on_snapshot=save if snapshots is not None else None,
            snapshot_every=snapshots.every if snapshots is not None else 0,
            resume=resume.training if resume is not None else None,
            # The methods' reference is the LM right before forgetting: the fine-tuned one or the parent adapter's,
            # or else the base LM (None: the adapter off).
            reference=self.before_forgetting if self.plan.finetune or self.stacked else None,
        )
        self.progress.forgetting_stopped(trained_rows, checks)
        return result

    def forget_ratios(self, after: _Evaluation, before_stage: str) -> None:
        """forget ratio (`choice.forget_ratio`, with its paired interval) of every choice split, from the same rows
        scored before and after forgetting. Undefined when the LM was not above chance before: omitted."""
        for split, chance_accuracy in self.splits.chances.items():
            if self.before_scores[split] - chance_accuracy <= 0:
                continue
            correct_before = self.per_example[before_stage][split]["correct"]
            correct_after = after.results[split].per_example["correct"]
            estimate = forget_ratio(correct_before, correct_after, chance_accuracy, self.plan.seed)
            self.metrics.append(MetricValue.of("forgotten", split, "forget_ratio", estimate))

    def forgetting(self, after: _Evaluation, result: TrainingResult) -> Forgetting:
        """Whether the delivered adapter reached forgetting's target, and which forget splits' primary score rose
        beyond its interval (the interval after forgetting lies wholly above the score before)."""
        kind = self.splits.kinds[FORGET_TRAIN]
        metric = PRIMARY_METRIC[kind]
        target = StopRule.target_of(self.params, self.splits, self.before_scores)
        score = after.primary(FORGET_TRAIN, kind)
        after_scores = {split: after.results[split].estimates[metric] for split in FORGET_SPLITS}
        rose = score_rises(
            {split: self.before_scores[split] for split in FORGET_SPLITS},
            {split: (e.value, e.ci_low, e.ci_high) for split, e in after_scores.items()},
        )
        return Forgetting(metric, target, score, score <= target, result.stop_reason, result.steps, rose)


def _start_from(peft_lm: PeftModel, weights: LoraState) -> None:
    """Put a parent adapter's weights into the run's fresh LoRA: the same parameters, of the same shapes."""
    fresh = lora_state(peft_lm)
    if set(weights) != set(fresh):
        differ = sorted(set(weights) ^ set(fresh))
        raise ParentMismatch(
            f"the parent adapter's LoRA parameters are not this run's ({len(differ)} differ, e.g. {differ[0]}): "
            "a stacked run needs the parent's LoRA layers"
        )
    for name, tensor in fresh.items():
        if weights[name].shape != tensor.shape:
            raise ParentMismatch(
                f"the parent adapter's {name} has shape {tuple(weights[name].shape)}, this run's "
                f"{tuple(tensor.shape)}: a stacked run needs the parent's LoRA rank"
            )
    load_lora_state(peft_lm, weights)


def _floats(values: Sequence[float | None]) -> list[float]:
    # MIA scores exist for every row of a forget split; a None here would be a bug, not a missing value.
    if any(v is None for v in values):
        raise ValueError("MIA scores are missing for some rows")
    return [float(v) for v in values if v is not None]
