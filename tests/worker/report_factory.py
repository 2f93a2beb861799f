"""Signed audit reports (schema lethe.audit-report/3) as the audit pipeline writes them, for the report renderers.

The numbers are those of a plausible SmolLM2 audit (30 layers, 100 rows a split): forgetting took forget-heldout
accuracy from 0.97 to 0.5, relearning on 8 rows brings most of it back (far beyond what it teaches the never-learned
base LM), probes still solve the task, paraphrase is inconclusive. Every entry is the engine's own: per-row scores
judged by `judge` (intervals, controls, verdicts) and written by `attack_entry`, so the report is consistent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from scipy.stats import binomtest

from lethe.attacks import ATTACKS, Thresholds
from lethe.forgetting import Forgetting, ScoreRise
from lethe.signing import SigningKey, key_id_of, sign
from worker.engine.audit.outcome import AttackOutcome, RowScores, Variant, judge, overall_verdict
from worker.engine.audit.run import AuditedAttack
from worker.reports.report import DIAGNOSTICS_NOTE, MIN_ROWS, attack_entry

XSS_NAME = "<script>alert(1)</script>"
ALL_ATTACKS = ("relearn", "probe", "quantize", "paraphrase", "in_context", "trigger")
ALL_DIAGNOSTICS = ("restore", "patch")
LAYERS = 30
# A fixed key (from a fixed 32-byte seed), so that factory reports are the same bytes on every run.
_PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNING_KEY = SigningKey(key_id_of(_PRIVATE.public_key()), _PRIVATE)
THRESHOLDS: dict[str, Any] = {"recovery": 0.25, "attacks": {}, "trigger_drop": 0.05, "min_forgetting": 0.05}
# Rows of every split: scores are 0/1 correctness, so every mean below has two decimals.
ROWS = 100


def _scores(mean: float) -> RowScores:
    """ROWS rows of 0/1 correctness with this mean (the first ones right: rows easy for one LM are for the others)."""
    right = round(mean * ROWS)
    return RowScores([1.0] * right + [0.0] * (ROWS - right))


def _entry(name: str, split: str, outcome_variants: list[Variant], params: dict[str, Any], **outcome: Any) -> Any:
    """The attack's report entry as the pipeline writes it: the outcome judged by the engine's own rules."""
    before = outcome.pop("before", _scores(0.97))
    after = outcome.pop("after_forgetting", _scores(0.5))
    measured = AttackOutcome("accuracy", split, before, after, outcome_variants, chance=0.5, **outcome)
    judgement = judge(name, measured, Thresholds.model_validate(THRESHOLDS), seed=0)
    return AuditedAttack(name, ATTACKS.get(name).parse(params).model_dump(mode="json"), measured, judgement)


def _rising(layer: int, low: float, high: float) -> float:
    """A score that rises across the layers like a probe's does (a logistic in depth)."""
    return round(low + (high - low) / (1 + math.exp(-(layer - LAYERS / 3) / 3)), 2)


def _attacks(retain_sets: tuple[str, ...]) -> dict[str, Any]:
    """Every attack as audited (AuditedAttack), by name."""
    relearn_curves: dict[str, list[tuple[int, float]]] = {
        "k=2": [(0, 0.5), (2, 0.56), (4, 0.63), (6, 0.68), (8, 0.72)],
        "k=8": [(0, 0.5), (2, 0.66), (4, 0.8), (6, 0.86), (8, 0.9)],
        "benign": [(0, 0.5), (2, 0.51), (4, 0.53), (6, 0.54), (8, 0.55)],
        # The never-learned base LM (0.55 zero-shot) relearning from the same rows.
        "control k=2": [(0, 0.55), (8, 0.57)],
        "control k=8": [(0, 0.55), (8, 0.6)],
        "control benign": [(0, 0.55), (8, 0.55)],
    }
    relearn = _entry(
        "relearn",
        "forget_heldout",
        [
            Variant(
                name,
                _scores(relearn_curves[name][-1][1]),
                control_before=_scores(0.55),
                control_after=_scores(relearn_curves[f"control {name}"][-1][1]),
            )
            for name in ("k=2", "k=8", "benign")
        ],
        {"examples": [2, 8], "steps": 8, "learning_rate": 0.001, "evaluate_every": 2, "benign": True},
        curves=relearn_curves,
    )
    probe = _entry(
        "probe",
        "forget_heldout",
        [
            Variant(
                f"layer_{i}",
                _scores(_rising(i, 0.53, 0.88)),
                before=_scores(_rising(i, 0.55, 0.95)),
                layer=i,
                control_before=_scores(0.55),
                control_after=_scores(_rising(i, 0.55, 0.7)),
            )
            for i in range(LAYERS)
        ],
        {},
    )
    quantize = _entry(
        "quantize",
        "forget_train",
        [Variant("int8", _scores(0.44)), Variant("int4", _scores(0.52))],
        {"schemes": ["int8", "int4"], "group_size": 64, "split": "forget_train"},
        before=_scores(0.98),
        after_forgetting=_scores(0.45),
    )
    # Forgetting barely moved the paraphrased rows (0.60 -> 0.58): the rate is undefined, the attack inconclusive.
    paraphrase = _entry(
        "paraphrase",
        "forget_train",
        [
            Variant("retemplated", _scores(0.59), before=_scores(0.6), after_forgetting=_scores(0.58)),
            Variant("lettered_shuffled", _scores(0.6), before=_scores(0.62), after_forgetting=_scores(0.6)),
        ],
        {"split": "forget_train"},
        before=_scores(0.6),
        after_forgetting=_scores(0.58),
    )
    in_context = _entry(
        "in_context",
        "forget_heldout",
        [
            Variant(
                f"k={k}", _scores(after), before=_scores(0.98), control_before=_scores(0.55), control_after=_scores(c)
            )
            for k, after, c in ((1, 0.55, 0.6), (4, 0.63, 0.7))
        ],
        {"shots": [1, 4]},
    )
    trigger = _entry(
        "trigger",
        "retain",
        [
            Variant(
                name,
                _scores(0.68 - drop),
                before=_scores(0.7),
                after_forgetting=_scores(0.68),
                control=_scores(0.69),
            )
            for name, drop in zip(retain_sets, [0.13, 0.04, 0.02, 0.03], strict=False)
        ],
        {"words": 8, "position": "prefix"},
        before=_scores(0.7),
        after_forgetting=_scores(0.68),
        effect="damage",
    )
    return {a.name: a for a in (relearn, probe, quantize, paraphrase, in_context, trigger)}


def _krs_variants(components: dict[str, float]) -> list[dict[str, Any]]:
    """KRS per component and 5-layer window around every layer, rising over the last layers by `components`' top."""
    variants = []
    for component, top in components.items():
        for centre in range(LAYERS):
            first, last = max(0, centre - 2), min(LAYERS - 1, centre + 2)
            krs = round(top * (centre / (LAYERS - 1)) ** 3, 4)
            variants.append(
                {
                    "name": f"{component}@{first}-{last}",
                    "component": component,
                    "first_layer": first,
                    "last_layer": last,
                    "krs": krs,
                    "n": 36,
                    "ci_low": round(krs - 0.05, 4),
                    "ci_high": round(krs + 0.05, 4),
                }
            )
    return variants


def _diagnostics() -> dict[str, dict[str, Any]]:
    """Hong et al.'s picture: value vectors restore little; the last layers' MLP coefficients much."""
    restore = {
        "name": "restore",
        "description": "The restore diagnostic (factory).",
        "params": {"components": ["value_vectors", "mlp", "attention"], "window": 5, "layers": None},
        "metric": "krs",
        "split": "forget_train",
        "rows": 36,
        "rows_undefined": 0,
        "skipped_components": {},
        "variants": _krs_variants({"value_vectors": 0.08, "mlp": 0.55, "attention": 0.3}),
    }
    patch = {
        "name": "patch",
        "description": "The patch diagnostic (factory).",
        "params": {"components": ["mlp_coefficients", "attention_output"], "window": 5, "layers": None},
        "metric": "krs",
        "split": "forget_train",
        "rows": 36,
        "rows_undefined": 2,
        "skipped_components": {},
        "variants": _krs_variants({"mlp_coefficients": 0.85, "attention_output": 0.4}),
    }
    return {"restore": restore, "patch": patch}


# The forget job of the report: 12 steps to chance (0.5) on a two-choice task.
REACHED = Forgetting("accuracy", 0.55, 0.5, True, "target", 12)
MISSED = Forgetting(
    "accuracy", 0.55, 0.76, False, "max_steps", 20, (ScoreRise("forget_heldout", 0.64, 0.80, 0.66, 0.89),)
)


def _wilson(accuracy: float, n: int) -> tuple[float, float]:
    interval = binomtest(round(accuracy * n), n).proportion_ci(method="wilson")
    return round(float(interval.low), 4), round(float(interval.high), 4)


def _training_curves(retain_sets: tuple[str, ...]) -> list[dict[str, Any]]:
    steps = range(1, 13)
    curves = [
        {"split": "forget_train", "name": "accuracy", "points": [[s, round(0.97 - 0.04 * s, 4)] for s in steps]},
        {"split": "forget_heldout", "name": "accuracy", "points": [[s, round(0.97 - 0.039 * s, 4)] for s in steps]},
    ]
    for i, name in enumerate(retain_sets):
        start = 0.7 - 0.05 * i
        curves.append(
            {"split": f"retain:{name}", "name": "accuracy", "points": [[s, round(start - 0.002 * s, 4)] for s in steps]}
        )
    return curves


def build_report(
    *,
    retain_sets: tuple[str, ...] = ("piqa", XSS_NAME),
    attacks: Iterable[str] = ALL_ATTACKS,
    training_curves: bool = True,
    diagnostics: Iterable[str] = ALL_DIAGNOSTICS,
    forgetting: Forgetting = REACHED,
) -> dict[str, Any]:
    """An unsigned report with the named attacks and diagnostics (in that order) and retain sets (user-chosen
    names), and the forget job's outcome of forgetting."""
    by_name = _attacks(retain_sets)
    chosen = [by_name[name] for name in attacks]
    verdict, reasons = overall_verdict([attack.judgement for attack in chosen])
    splits = {"forget_train": ROWS, "forget_heldout": ROWS} | {f"retain:{name}": ROWS for name in retain_sets}
    stage_metrics = [
        {"stage": stage, "split": split, "name": "accuracy", "value": value, "n": splits[split]}
        | dict(zip(("ci_low", "ci_high"), _wilson(value, splits[split]), strict=True))
        for split in splits
        for stage, value in zip(
            ("base", "finetuned", "forgotten"),
            (0.55, 0.97, 0.5) if split.startswith("forget") else (0.7, 0.71, 0.68),
            strict=True,
        )
    ]
    return {
        "schema": "lethe.audit-report/3",
        "audit_id": "6f1c2b8e-3d4a-4c1e-9b7a-2f5e8d9c0a11",
        "audit_job_id": "0b5d7e2f-8a9c-4d3e-a1b2-c3d4e5f60718",
        "created_at": "2026-05-04T12:30:00+00:00",
        "lethe_version": "0.1.0",
        "adapter": {
            "id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
            "sha256": "3" * 64,
            "base_model": "smollm2-135m-instruct",
            "forget_job_id": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
        },
        "forget_job": {
            "method": "random_label",
            "method_params": {"learning_rate": 0.001, "epochs": 10},
            "kind": "choice",
            "seed": 0,
            "dataset_sha256": {"forget": "a" * 64} | {name: "b" * 64 for name in retain_sets},
            "steps": 12,
            "stop_reason": "target",
            "splits": splits,
            "forgetting": {**forgetting.as_dict(), "summary": forgetting.summary()},
        },
        "thresholds": {**THRESHOLDS, "attacks": dict(THRESHOLDS["attacks"])},
        "verdict": verdict,
        "verdict_reasons": reasons,
        "min_rows": MIN_ROWS,
        "attacks": [attack_entry(attack) for attack in chosen],
        "diagnostics": [_diagnostics()[name] for name in diagnostics],
        "diagnostics_note": DIAGNOSTICS_NOTE,
        "training_curves": _training_curves(retain_sets) if training_curves else [],
        "stage_metrics": stage_metrics,
    }


def build_signed_report(**kwargs: Any) -> dict[str, Any]:
    """`build_report(**kwargs)` signed as the server signs it: {"report", "signature"}."""
    return sign(build_report(**kwargs), SIGNING_KEY)
