"""The audit report as JSON: what was audited, every attack's numbers and verdict, every diagnostic's numbers (no
verdict), the forget job's curves.

The report is a plain JSON object (schema `lethe.audit-report/3`) built only from the audit's results and the
catalogue; the HTML page is drawn from it alone, and the report is then signed (lethe.signing) with the page's SHA-256
in it (`sign_with_page`), so that checking the JSON's signature proves the page too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from lethe.attacks import ATTACKS, MIN_ROWS, Thresholds
from lethe.signing import ALGORITHM, SigningKey, sign
from worker.engine.audit.outcome import VariantResult, overall_verdict
from worker.engine.audit.run import AuditedAttack, AuditedDiagnostic, SkippedAttack
from worker.reports.html import render_html

# /2: every result and variant carries n, its intervals' confidence, ci_low / ci_high, the never-learned control's
# recovery and the excess over it (with intervals) and, when inconclusive, its reason; the report its verdict_reasons.
# /3: html_sha256, the SHA-256 (hex) of the HTML page's bytes as stored; signed with Ed25519 over RFC 8785 JSON.
SCHEMA = "lethe.audit-report/3"

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

# Said beside every diagnostic, in the JSON report and on its page.
DIAGNOSTICS_NOTE = (
    "Diagnostics say where forgetting changed the LM; they never enter the verdict. The adapter sits on a public base "
    "model and can be removed outright (load the base model without it), so restoring its pre-forgetting weights "
    "measures localization, not depth. KRS = 1 - MSE(before, intervened) / MSE(before, forgotten) on the answer "
    "logits, averaged over rows: 1 = the pre-forgetting logits come back, 0 = nothing changes, below 0 = further away."
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


def diagnostic_entry(diagnostic: AuditedDiagnostic) -> dict[str, Any]:
    """One diagnostic's section of the report (also the audit_diagnostics row's content): KRS per variant."""
    outcome = diagnostic.outcome
    return {
        "name": diagnostic.name,
        "description": ATTACKS.get(diagnostic.name).description,
        "params": diagnostic.params,
        "metric": outcome.metric,
        "split": outcome.split,
        "rows": outcome.rows,
        "rows_undefined": outcome.rows_undefined,
        "skipped_components": dict(outcome.skipped),
        "variants": [
            {
                "name": variant.name,
                "component": variant.component,
                "first_layer": variant.window.first,
                "last_layer": variant.window.last,
                "krs": None if variant.krs is None else finite(variant.krs.value),
                "n": 0 if variant.krs is None else variant.krs.n,
                "ci_low": None if variant.krs is None else finite(variant.krs.ci_low),
                "ci_high": None if variant.krs is None else finite(variant.krs.ci_high),
            }
            for variant in outcome.variants
        ],
    }


def training_curves(points: Iterable[Any]) -> list[dict[str, Any]]:
    """The forget job's curves (its curve points: scores measured during forgetting), one per (split, metric), by
    step."""
    curves: dict[tuple[str, str], list[list[float | None]]] = {}
    for point in points:
        curves.setdefault((point.split, point.name), []).append([point.step, finite(point.value)])
    return [
        {"split": split, "name": name, "points": sorted(points, key=lambda point: point[0] or 0)}
        for (split, name), points in sorted(curves.items())
    ]


def stage_metrics(metrics: Iterable[Any]) -> list[dict[str, Any]]:
    """The forget job's metrics of each stage (base, finetuned, forgotten) with n and 95% interval, without probe
    layers."""
    return [
        {
            "stage": m.stage,
            "split": m.split,
            "name": m.name,
            "value": finite(m.value),
            "n": m.n,
            "ci_low": finite(m.ci_low),
            "ci_high": finite(m.ci_high),
        }
        for m in metrics
        if m.layer is None
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
    diagnostics: Sequence[AuditedDiagnostic] = (),
    forget_curves: Iterable[Any] = (),
) -> dict[str, Any]:
    """The unsigned report; `diagnostics` are listed apart from the attacks and never enter the verdict.
    `forget_job` carries its `forgetting` outcome with the summary in words."""
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
        "diagnostics": [diagnostic_entry(diagnostic) for diagnostic in diagnostics],
        "diagnostics_note": DIAGNOSTICS_NOTE,
        "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
        "training_curves": training_curves(forget_curves),
        "stage_metrics": stage_metrics(metrics),
    }


def sign_with_page(unsigned: dict[str, Any], key: SigningKey) -> tuple[dict[str, Any], bytes]:
    """The signed report and its HTML page: the page is drawn first (it shows the signing key's id, not the
    signature, which cannot cover the page that shows it), its SHA-256 goes into the report, then the report is
    signed. lethe.signing.NotCanonical if the report has no canonical JSON form."""
    page = render_html({"report": unsigned, "signature": {"algorithm": ALGORITHM, "key_id": key.key_id}})
    data = page.encode("utf-8")
    return sign({**unsigned, "html_sha256": hashlib.sha256(data).hexdigest()}, key), data
