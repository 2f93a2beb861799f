"""The audit pipeline: catalogue ⇄ engine ⇄ storage for one audit job.

It rebuilds the audited adapter's forget job exactly (same rows, same heldout split, same seed), opens the
adapter and its pre-forgetting state from the object store, runs the attacks and then the diagnostics (restore,
patch: never judged), stores the signed report (JSON and HTML) and writes the per-attack results, the diagnostics,
the verdict and the job's status in one transaction.
"""

import hashlib
import json
import uuid
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from safetensors.torch import load as load_safetensors
from sqlalchemy.orm import Session

from lethe.forgetting import Forgetting
from lethe.rows import kind_of, split_heldout
from lethe.settings import Settings
from lethe.signing import KeyFileMissing, NotCanonical, SigningKey, load_signing_key
from lethe.specs import AuditJobSpec
from models.db import session_scope, unit_of_work
from models.repositories import (
    AdapterRepository,
    AuditRepository,
    CurvePointRepository,
    JobRepository,
    MetricRepository,
    SigningKeyRepository,
)
from models.tables import AuditDiagnostic, AuditResult, CurvePoint, Metric, utcnow
from storage import ObjectStore
from storage.keys import before_forgetting_key, report_key
from worker.engine.audit.run import (
    AuditedAttack,
    AuditedDiagnostic,
    audit_context,
    is_diagnostic,
    run_audit,
    run_diagnostics,
)
from worker.engine.lm.adapter import opened_adapter_archive
from worker.engine.lm.load import BaseLMCache
from worker.pipelines.forget import leased_base, load_forget_inputs
from worker.pipelines.jobs import JobFailure, ProgressReporter, held_claim, put_undoable, run_job, run_next_job
from worker.reports.report import attack_entry, build_report, diagnostic_entry, sign_with_page


@dataclass
class AuditTarget:
    """What the audit job names: the audit, the adapter and the forget job that made it, and its metrics."""

    audit_id: uuid.UUID
    tenant_id: uuid.UUID
    spec: AuditJobSpec
    adapter: dict[str, Any]
    adapter_key: str
    forget_job_id: uuid.UUID
    forget_metrics: list[Metric]
    forget_curves: list[CurvePoint]
    forgetting: Forgetting | None


def run_audit_job(settings: Settings, store: ObjectStore, lm_cache: BaseLMCache, job_id: uuid.UUID) -> str:
    """Run one audit job end to end; returns its final status. Safe to call twice for one job."""
    return run_job(settings, job_id, lambda: _run_claimed(settings, store, lm_cache, job_id))


def run_next_audit_job(
    settings: Settings, store: ObjectStore, lm_cache: BaseLMCache, woken_by: uuid.UUID | None = None
) -> str:
    """Claim the next queued audit job in fair order (`run_next_job`) and run it as `run_audit_job` does."""
    return run_next_job(settings, "audit", lambda job_id: _run_claimed(settings, store, lm_cache, job_id), woken_by)


def _target(settings: Settings, job_id: uuid.UUID) -> AuditTarget:
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        audit = AuditRepository(session).get_for_job(job_id)
        assert job is not None and audit is not None, "an audit job always has its audit row"
        adapter = AdapterRepository(session).get(audit.tenant_id, audit.adapter_id)
        if adapter is None:
            raise JobFailure("adapter_missing", f"adapter {audit.adapter_id} no longer exists")
        metrics = list(MetricRepository(session).list_for_job(adapter.job_id))
        curves = list(CurvePointRepository(session).list_for_job(adapter.job_id))
        forget_job = JobRepository(session).get(audit.tenant_id, adapter.job_id)
        forgetting = forget_job.forgetting if forget_job is not None else None
        session.expunge_all()
        return AuditTarget(
            audit_id=audit.id,
            tenant_id=audit.tenant_id,
            spec=AuditJobSpec.model_validate(job.spec),
            adapter={
                "id": str(adapter.id),
                "sha256": adapter.sha256,
                "base_model": adapter.base_model,
                "forget_job_id": str(adapter.job_id),
            },
            adapter_key=adapter.object_key,
            forget_job_id=adapter.job_id,
            forget_metrics=metrics,
            forget_curves=curves,
            forgetting=Forgetting.from_dict(forgetting) if forgetting is not None else None,
        )


def _signing_key(settings: Settings) -> SigningKey:
    """The current signing key (the catalogue names it, LETHE_SIGNING_KEY_DIR holds it); JobFailure if there is none
    or this worker cannot read it."""
    with session_scope(settings.database_url) as session:
        row = SigningKeyRepository(session).current()
        key_id = row.key_id if row is not None else None
    if key_id is None:
        raise JobFailure("no_signing_key", "the catalogue has no signing key (the API makes one when it starts)")
    try:
        return load_signing_key(settings.signing_keys_dir, key_id)
    except KeyFileMissing as exc:
        raise JobFailure("signing_key_missing", str(exc)) from exc


def _run_claimed(settings: Settings, store: ObjectStore, lm_cache: BaseLMCache, job_id: uuid.UUID) -> None:
    report = ProgressReporter(settings, job_id)
    report("loading", 0.0)
    _signing_key(settings)  # fail now, not after the attacks, if the report could not be signed
    target = _target(settings, job_id)
    inputs = load_forget_inputs(settings, store, target.forget_job_id)
    forget_spec = inputs.spec
    forget_train, forget_heldout = split_heldout(inputs.forget_rows, forget_spec.heldout_fraction, forget_spec.seed)
    archive = store.get(target.adapter_key)
    if hashlib.sha256(archive).hexdigest() != target.adapter["sha256"]:
        raise JobFailure("adapter_corrupt", "the stored adapter does not match the checksum the catalogue recorded")
    try:
        before_forgetting = load_safetensors(store.get(before_forgetting_key(target.tenant_id, target.forget_job_id)))
    except KeyError as exc:
        raise JobFailure(
            "evidence_missing", "the adapter's pre-forgetting state is not stored (made before audits existed?)"
        ) from exc
    thresholds = target.spec.thresholds
    # Diagnostics (restore, patch) run after the attacks and are never judged; progress is shared by their counts.
    attacks = [choice for choice in target.spec.attacks if not is_diagnostic(choice.name)]
    diagnostics = [choice for choice in target.spec.attacks if is_diagnostic(choice.name)]
    attacks_share = len(attacks) / len(target.spec.attacks)
    with (
        leased_base(lm_cache, forget_spec) as base,
        opened_adapter_archive(base, archive, before_forgetting) as (peft_lm, manifest),
    ):
        ctx = audit_context(
            base,
            peft_lm,
            before_forgetting,
            forget_train,
            forget_heldout,
            inputs.retain,
            batch_size=forget_spec.method.parsed().batch_size,
            seed=forget_spec.seed,
            finetuned=forget_spec.finetune is not None,
        )
        try:
            audited, skipped = run_audit(
                ctx, attacks, thresholds, lambda stage, fraction: report(stage, fraction * attacks_share)
            )
            diagnosed, skipped_diagnostics = run_diagnostics(
                ctx,
                diagnostics,
                lambda stage, fraction: report(stage, attacks_share + fraction * (1 - attacks_share)),
            )
        except ValueError as exc:
            # Params the API could not check without the LM (e.g. a patch layer beyond the LM's depth).
            raise JobFailure("attack_rejected", str(exc)) from exc

    report("reporting", 0.0)
    splits = {"forget_train": len(forget_train), "forget_heldout": len(forget_heldout)}
    splits.update({f"retain:{name}": len(rows) for name, rows in inputs.retain.items()})
    unsigned = build_report(
        audit_id=str(target.audit_id),
        audit_job_id=str(job_id),
        created_at=utcnow().isoformat(),
        lethe_version=metadata.version("lethe"),
        adapter=target.adapter,
        forget_job={
            "id": str(target.forget_job_id),
            "method": forget_spec.method.name,
            "method_params": forget_spec.method.params,
            "finetune": forget_spec.finetune.model_dump() if forget_spec.finetune else None,
            "kind": kind_of(inputs.forget_rows),
            "seed": forget_spec.seed,
            "heldout_fraction": forget_spec.heldout_fraction,
            "dataset_sha256": inputs.dataset_hashes,
            "splits": splits,
            "steps": manifest.get("steps"),
            "stop_reason": manifest.get("stop_reason"),
            "forgetting": _forgetting_entry(target.forgetting),
        },
        thresholds=thresholds,
        attacks=audited,
        skipped=[*skipped, *skipped_diagnostics],
        forget_metrics=target.forget_metrics,
        diagnostics=diagnosed,
        forget_curves=target.forget_curves,
    )
    try:
        # The current key again: a rotation while the attacks ran may have retired the one checked at the start.
        signed, page = sign_with_page(unsigned, _signing_key(settings))
    except NotCanonical as exc:
        raise JobFailure("report_not_canonical", f"the report has no canonical JSON form to sign: {exc}") from exc
    signed_json = json.dumps(signed, indent=2, sort_keys=True).encode("utf-8")
    json_key = report_key(target.tenant_id, target.audit_id, "json")
    html_key = report_key(target.tenant_id, target.audit_id, "html")
    with unit_of_work(settings.database_url) as work:
        put_undoable(work, store, json_key, signed_json, "application/json")
        put_undoable(work, store, html_key, page, "text/html; charset=utf-8")
        _record(
            work.session, job_id, target, audited, diagnosed, signed, json_key, html_key, len(signed_json) + len(page)
        )


def _forgetting_entry(forgetting: Forgetting | None) -> dict[str, Any] | None:
    """The forget job's outcome of forgetting with its summary in words (None for jobs recorded before it was)."""
    if forgetting is None:
        return None
    return {**forgetting.as_dict(), "summary": forgetting.summary()}


def _record(
    session: Session,
    job_id: uuid.UUID,
    target: AuditTarget,
    audited: list[AuditedAttack],
    diagnosed: list[AuditedDiagnostic],
    signed: dict[str, Any],
    json_key: str,
    html_key: str,
    report_size_bytes: int,
) -> None:
    """Write the per-attack results, the diagnostics, the verdict, the report's keys and the job's final status."""
    # A result row holds the report's entry for the attack, field for field (all but name and description).
    columns = set(AuditResult.__table__.columns.keys())
    results = [
        AuditResult(
            audit_id=target.audit_id,
            attack=attack.name,
            **{key: value for key, value in attack_entry(attack).items() if key in columns},
        )
        for attack in audited
    ]
    verdict = signed["report"]["verdict"]
    AuditRepository(session).record(
        target.audit_id,
        results,
        verdict=verdict,
        verdict_reasons=signed["report"]["verdict_reasons"],
        report_key=json_key,
        report_html_key=html_key,
        signature=signed["signature"]["value"],
        signing_key_id=signed["signature"]["key_id"],
        skipped=signed["report"]["skipped"],
        report_size_bytes=report_size_bytes,
    )
    # A diagnostic row holds the report's entry for it, field for field (all but description).
    diagnostic_columns = set(AuditDiagnostic.__table__.columns.keys())
    AuditRepository(session).add_diagnostics(
        AuditDiagnostic(
            audit_id=target.audit_id,
            **{key: value for key, value in diagnostic_entry(diagnostic).items() if key in diagnostic_columns},
        )
        for diagnostic in diagnosed
    )
    succeeded = {"audit_id": str(target.audit_id), "verdict": verdict}
    attempt = held_claim(job_id).attempt
    if not JobRepository(session).finish(job_id, "succeeded", utcnow(), succeeded, attempt=attempt):
        raise JobFailure("job_closed", "the job was closed or re-queued while it ran (reaped or cancelled)")
