"""The full audit's cost relative to the forget job it audits, on Lethe's demo request.

The forget job is `examples/demo_request.json` on the demo's files (PIQA forgotten, ARC-Easy retained), read as
the API reads it (defaults filled, general-text perplexity on by default) and run as the forget pipeline runs it:
`run_forget` on the base LM already in the cache (a warm worker). The audit is every attack that applies, with
its default params and the default thresholds (what `POST /v1/audits` runs when it names no attacks), on the job's
outcome: the audit context is built from the outcome in memory, which holds what the audit pipeline reads back
from the object store (the forgotten adapter attached to the base LM, the adapter before forgetting, the same
rows, batch size and seed). Neither side's time includes the pipelines' object-store and database I/O.

The audit's cost is its time over the mean of two runs of the forget job, one before it and one after (see
`measure`).

`python -m bench.audit_bench CACHE_DIR` measures it and prints the results, with its peak RSS, as one JSON line
(run in a fresh process, so the peak is the job's and the audit's own).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from api.schemas import ForgetRequestIn
from bench.jobs import BASE_LM
from bench.machine import load_average, machine
from bench.memory import PEAK_RSS_SOURCE, RssSampler, peak_rss_mb, rss_mb
from lethe.attacks import ATTACKS, Thresholds
from lethe.methods import METHODS
from lethe.rows import ChoiceRow, Row, TextRow, kind_of, split_heldout
from lethe.specs import AttackChoice, FinetuneSpec
from worker.allocator import allocator_label
from worker.engine.audit.outcome import overall_verdict
from worker.engine.audit.run import audit_context, is_diagnostic, run_audit, run_diagnostics
from worker.engine.forget.base_stage import BASE_STAGES
from worker.engine.forget.run import ForgetOutcome, ForgetPlan, run_forget
from worker.engine.lm.load import BaseLMCache, LoadedLM
from worker.engine.lm.lora import attached_lora
from worker.native_caches import native_cache_settings
from worker.pipelines.forget import general_text_rows
from worker.reports.report import attack_entry, diagnostic_entry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO_REQUEST = EXAMPLES / "demo_request.json"
# The files examples/demo.py uploads: the forget set, and the retain set under its dataset name.
FORGET_FILE = EXAMPLES / "data" / "piqa_demo.jsonl"
RETAIN_FILES = {"arc_easy": EXAMPLES / "data" / "arc_easy_demo.jsonl"}


@dataclass(frozen=True)
class AuditedJob:
    """A forget job's plan and rows, as the forget pipeline hands them to `run_forget`."""

    plan: ForgetPlan
    forget_train: Sequence[Row]
    forget_heldout: Sequence[Row]
    retain: Mapping[str, Sequence[Row]]
    general_text: Sequence[TextRow]


def _choice_rows(path: Path) -> list[ChoiceRow]:
    return [ChoiceRow.from_dict(json.loads(line)) for line in path.read_text("utf-8").splitlines() if line.strip()]


def demo_job() -> AuditedJob:
    """The demo request on the demo's files, split and planned as the forget pipeline does."""
    # The datasets are local files here; the id only satisfies the request's schema.
    request = ForgetRequestIn.model_validate(
        {**json.loads(DEMO_REQUEST.read_text("utf-8")), "forget_dataset": str(uuid.UUID(int=0))}
    )
    forget_train, forget_heldout = split_heldout(_choice_rows(FORGET_FILE), request.heldout_fraction, request.seed)
    finetune = request.finetune
    plan = ForgetPlan(
        method=request.method.name,
        method_params=request.method.params,
        finetune=FinetuneSpec(epochs=finetune.epochs, learning_rate=finetune.learning_rate) if finetune else None,
        probe=request.probe,
        seed=request.seed,
    )
    return AuditedJob(
        plan=plan,
        forget_train=forget_train,
        forget_heldout=forget_heldout,
        retain={name: _choice_rows(path) for name, path in RETAIN_FILES.items()},
        general_text=general_text_rows() if request.general_text_perplexity else [],
    )


# How often the resident set is sampled: often enough to see a pass's peak (a scoring batch takes about a second
# here), seldom enough that the sampling thread takes no measurable time from the run it watches.
RSS_INTERVAL_S = 0.02


def _log(message: str) -> None:
    print(f"[audit bench {time.strftime('%H:%M:%S')} load {load_average():.2f}] {message}", file=sys.stderr, flush=True)


@dataclass
class _Stage:
    name: str
    started: float
    load_average: float
    seconds: float = 0.0


class _StageClock:
    """Wall time of each stage a run reports through on_progress(stage, fraction).

    A stage lasts until the next one starts; the first starts with the clock, so the stages' times add up to the
    whole run's.
    """

    def __init__(self, label: str, sampler: RssSampler) -> None:
        self.label = label
        self.sampler = sampler
        self.stages: list[_Stage] = []
        self.started = time.perf_counter()

    def __call__(self, stage: str, _fraction: float) -> None:
        if self.stages and self.stages[-1].name == stage:
            return
        now = time.perf_counter()
        if self.stages:
            self.stages[-1].seconds = now - self.stages[-1].started
        self.stages.append(_Stage(stage, now if self.stages else self.started, load_average()))
        # The stage's first sample, here: one shorter than the sampling interval still has one.
        key = self.stage_key(stage)
        self.sampler.stage = key
        self.sampler.peaks[key] = max(self.sampler.peaks.get(key, 0.0), rss_mb())
        _log(f"{self.label}: {stage}")

    def stage_key(self, stage: str) -> str:
        """The name the RSS sampler keeps the stage's peak under."""
        return f"{self.label}: {stage}"

    def stop(self) -> float:
        """The run's wall time (closing its last stage)."""
        now = time.perf_counter()
        if self.stages:
            self.stages[-1].seconds = now - self.stages[-1].started
        return now - self.started


@dataclass(frozen=True)
class FullAudit:
    """The attacks a full audit runs, in the registry's order, and those that do not apply to the rows."""

    attacks: list[str]
    not_applicable: list[dict[str, str]]  # {"name", "reason"}: the rows give the attack nothing to work on


def full_audit(kind: str, has_retain: bool) -> FullAudit:
    """The attacks `POST /v1/audits` runs when it names none: every one that applies to the forget job's rows."""
    audit = FullAudit([], [])
    for name, spec in ATTACKS.items():
        refusal = spec.refusal(kind, has_retain)
        if refusal is not None:
            audit.not_applicable.append({"name": name, "reason": refusal})
        else:
            audit.attacks.append(name)
    return audit


def _timed_forget(
    base: LoadedLM, job: AuditedJob, label: str, sampler: RssSampler
) -> tuple[ForgetOutcome, _StageClock, float]:
    """The forget job's outcome, its stage clock and its wall time."""
    clock = _StageClock(label, sampler)
    outcome = run_forget(base, job.plan, job.forget_train, job.forget_heldout, job.retain, clock, job.general_text)
    return outcome, clock, clock.stop()


def measure(base: LoadedLM, job: AuditedJob) -> dict:
    """`_measure`, with the resident set sampled every RSS_INTERVAL_S (each attack's peak)."""
    with RssSampler(interval_s=RSS_INTERVAL_S) as sampler:
        return _measure(base, job, sampler)


def _measure(base: LoadedLM, job: AuditedJob, sampler: RssSampler) -> dict:
    """Time the forget job, a full audit of its outcome, then the forget job again; what each attack measured and
    judged, the load averages, and the process's peak RSS after each side.

    The ratio divides the audit's time by the mean of the two forget runs around it: these machines' speed drifts
    by up to 2x within minutes, and a single forget run before the audit biased the ratio by whichever way the
    machine drifted between the two. The second run is the same job (same rows, plan and seed), its outcome
    dropped, and it evaluates the base LM again as the first did (the base-stage cache emptied). Each attack's time
    runs from its first progress report to the next attack's (the first attack's includes building the audit
    context, a copy of the LoRA weights); its peak RSS is the sampler's peak over that time.
    """
    audit = full_audit(kind_of([*job.forget_train, *job.forget_heldout]), bool(job.retain))
    attacks = audit.attacks
    forget_load = load_average()
    outcome, forget_clock, first_forget_seconds = _timed_forget(base, job, "forget", sampler)
    rss_after_forget = peak_rss_mb()

    audit_load = load_average()
    audit_clock = _StageClock("audit", sampler)
    thresholds = Thresholds.model_validate({})
    # As the audit pipeline: the adapter on the base LM itself, the attacks, then the diagnostics (restore, patch:
    # never judged).
    judged = [name for name in attacks if not is_diagnostic(name)]
    diagnostics = [name for name in attacks if is_diagnostic(name)]
    with attached_lora(base.lm, outcome.adapter.config, outcome.adapter.state) as peft_lm:
        ctx = audit_context(
            base,
            peft_lm,
            outcome.before_forgetting,
            job.forget_train,
            job.forget_heldout,
            job.retain,
            # The audit pipeline's: the forget job's batch size (its method's) and seed.
            batch_size=METHODS.get(job.plan.method).parse(job.plan.method_params).batch_size,
            seed=job.plan.seed,
            # As the pipeline: the base LM is a never-learned control only when the forget job fine-tuned first.
            finetuned=job.plan.finetune is not None,
        )
        audited, skipped = run_audit(
            ctx, [AttackChoice(name=name, params={}) for name in judged], thresholds, audit_clock
        )
        diagnosed, skipped_diagnostics = run_diagnostics(
            ctx, [AttackChoice(name=name, params={}) for name in diagnostics], audit_clock
        )
    audit_seconds = audit_clock.stop()
    rss_after_audit = peak_rss_mb()
    second_forget_load = load_average()
    # The same job from scratch: the first run left its base-stage scores in the worker's cache, which would spare
    # the second run its base evaluation (as it spares a user's second job; the demo job is a first one).
    BASE_STAGES.clear()
    _, _, second_forget_seconds = _timed_forget(base, job, "forget again", sampler)
    forget_seconds = (first_forget_seconds + second_forget_seconds) / 2

    results = {attack.name: attack for attack in audited}
    measured = {diagnostic.name: diagnostic for diagnostic in diagnosed}
    reasons = {attack.name: attack.reason for attack in [*skipped, *skipped_diagnostics]}
    per_attack = []
    # run_audit and run_diagnostics report each one's start once, under a stage of its own (attack:<name> or
    # diagnostic:<name>; run_audit runs the probe first), listed here in the request's order.
    stages = {stage.name.partition(":")[2]: stage for stage in audit_clock.stages}
    for name in [*judged, *diagnostics]:
        stage = stages[name]
        entry: dict = {
            "name": name,
            "seconds": stage.seconds,
            "load_average": stage.load_average,
            "peak_rss_mb": sampler.peaks.get(audit_clock.stage_key(stage.name)),
        }
        if name in reasons:
            entry["skipped"] = reasons[name]
        elif name in measured:
            entry |= {"diagnostic": True, **diagnostic_entry(measured[name])}
        else:
            # The report's entry of the attack: the worst variant's numbers with intervals, verdict and reason.
            entry |= attack_entry(results[name])
        per_attack.append(entry)

    forget_stages: dict[str, float] = defaultdict(float)
    for stage in forget_clock.stages:
        forget_stages[stage.name] += stage.seconds
    forget_stage_peaks = {
        stage.name: sampler.peaks[forget_clock.stage_key(stage.name)] for stage in forget_clock.stages
    }
    plan = job.plan
    verdict, verdict_reasons = overall_verdict([attack.judgement for attack in audited])
    return {
        "date": machine()["date"],
        "method": plan.method,
        "method_params": plan.method_params,
        "finetune": plan.finetune.model_dump() if plan.finetune else None,
        "probe": plan.probe,
        "seed": plan.seed,
        "splits": {
            "forget_train": len(job.forget_train),
            "forget_heldout": len(job.forget_heldout),
            **{f"retain:{name}": len(rows) for name, rows in job.retain.items()},
            "general_text": len(job.general_text),
        },
        "forget_steps": outcome.forgetting.steps,
        "stop_reason": outcome.forgetting.stop_reason,
        # The mean of the runs before and after the audit; by stage: the first run's.
        "forget_seconds": forget_seconds,
        "forget_seconds_runs": [first_forget_seconds, second_forget_seconds],
        "forget_seconds_by_stage": dict(forget_stages),
        "forget_peak_rss_by_stage_mb": forget_stage_peaks,
        "forget_load_average": forget_load,
        "second_forget_load_average": second_forget_load,
        "audit_seconds": audit_seconds,
        "audit_load_average": audit_load,
        "ratio": audit_seconds / forget_seconds,
        "thresholds": thresholds.model_dump(mode="json"),
        "verdict": verdict,
        "verdict_reasons": verdict_reasons,
        "attacks": per_attack,
        "not_applicable": audit.not_applicable,
        "peak_rss_after_forget_mb": rss_after_forget,
        "peak_rss_mb": rss_after_audit,
        "peak_rss_from": PEAK_RSS_SOURCE,
        "allocator": allocator_label(),
        "native_caches": native_cache_settings(os.environ),
    }


if __name__ == "__main__":
    loaded = BaseLMCache(sys.argv[1]).get(*BASE_LM)
    print(json.dumps({"base_model": BASE_LM[0], **measure(loaded, demo_job())}))
