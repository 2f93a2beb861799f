"""The audit report as JSON: what was audited, every attack's numbers and verdict, the forget job's curves.

The report is a plain JSON object (schema `lethe.audit-report/2`) built only from the audit's results and the
catalogue; it is signed as it is (lethe.signing) and the HTML page is drawn from it alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from lethe.attacks import ATTACKS, MIN_ROWS, Thresholds
from worker.engine.audit.outcome import VariantResult, overall_verdict
from worker.engine.audit.run import AuditedAttack, SkippedAttack

# /2: every result and variant carries n, its intervals' confidence, ci_low / ci_high, the never-learned control's
# recovery and the excess over it (with intervals) and, when inconclusive, its reason; the report its verdict_reasons.
SCHEMA = "lethe.audit-report/2"

# The worst variant's numbers an attack's entry (and audit_results row) repeats at its top level.
WORST_VARIANT_FIELDS = (
    "before",
    "after_forgetting",
    "after_attack",
    "recovery",
    "excess_drop",
    "n",
    "confidence",
    "ci_low",
    "ci_high",
    "control_recovery",
    "control_ci_low",
    "control_ci_high",
    "excess_recovery",
    "excess_ci_low",
    "excess_ci_high",
)


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: an undefined number is null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _numbers(variant: VariantResult) -> dict[str, Any]:
    """A variant's fields, floats made JSON-safe."""
    return {key: finite(value) if isinstance(value, float) else value for key, value in asdict(variant).items()}


def attack_entry(attack: AuditedAttack) -> dict[str, Any]:
    """One attack's section of the report (also the audit_results row's content): the worst variant's numbers with
    their intervals, the verdict and its reason, every variant's numbers."""
    outcome, judgement = attack.outcome, attack.judgement
    spec = ATTACKS.get(attack.name)
    worst = _numbers(judgement.worst)
    return {
        "name": attack.name,
        "description": spec.description,
        "verdict_rule": spec.verdict_rule(),
        "params": attack.params,
        "metric": outcome.metric,
        "split": outcome.split,
        "effect": outcome.effect,
        **{key: worst[key] for key in WORST_VARIANT_FIELDS},
        "chance": finite(judgement.chance),
        "worst_variant": judgement.worst_variant,
        "verdict": judgement.verdict,
        "inconclusive_reason": judgement.reason,
        "variants": [_numbers(variant) for variant in judgement.variants],
        "curves": {name: [[step, finite(value)] for step, value in points] for name, points in outcome.curves.items()},
    }


def training_curves(metrics: Iterable[Any]) -> list[dict[str, Any]]:
    """The forget job's curves (metrics measured at a training step), one per (split, metric), by step."""
    curves: dict[tuple[str, str], list[list[float | None]]] = {}
    for m in metrics:
        if m.step is not None:
            curves.setdefault((m.split, m.name), []).append([m.step, finite(m.value)])
    return [
        {"split": split, "name": name, "points": sorted(points, key=lambda point: point[0] or 0)}
        for (split, name), points in sorted(curves.items())
    ]


def stage_metrics(metrics: Iterable[Any]) -> list[dict[str, Any]]:
    """The forget job's metrics of each stage (base, finetuned, forgotten), without curves or probe layers."""
    return [
        {"stage": m.stage, "split": m.split, "name": m.name, "value": finite(m.value)}
        for m in metrics
        if m.step is None and m.layer is None
    ]


def build_report(
    *,
    audit_id: str,
    audit_job_id: str,
    created_at: str,
    lethe_version: str,
    adapter: dict[str, Any],
    forget_job: dict[str, Any],
    thresholds: Thresholds,
    attacks: Sequence[AuditedAttack],
    skipped: Sequence[SkippedAttack],
    forget_metrics: Iterable[Any],
) -> dict[str, Any]:
    """The unsigned report."""
    metrics = list(forget_metrics)
    verdict, reasons = overall_verdict([attack.judgement for attack in attacks])
    return {
        "schema": SCHEMA,
        "audit_id": audit_id,
        "audit_job_id": audit_job_id,
        "created_at": created_at,
        "lethe_version": lethe_version,
        "adapter": adapter,
        "forget_job": forget_job,
        "thresholds": thresholds.model_dump(mode="json"),
        "verdict": verdict,
        "verdict_reasons": reasons,
        "min_rows": MIN_ROWS,
        "attacks": [attack_entry(attack) for attack in attacks],
        "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
        "training_curves": training_curves(metrics),
        "stage_metrics": stage_metrics(metrics),
    }
