"""Audits: validate the attacks against the registry and the audited forget job, create the queued job, read back."""

import uuid

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.errors import InvalidInput, NotFound, format_validation_errors
from api.pagination import page_of
from api.schemas import (
    AttackIn,
    AttackResultOut,
    AuditOut,
    AuditPage,
    AuditRequestIn,
    AuditSpecIn,
    AuditSummary,
    DiagnosticOut,
)
from api.services.base_models import check_named_layers
from api.services.deletions import deleted, deletion_of, missing
from api.services.jobs import job_state
from api.services.quotas import check_cost, check_room_for_job
from lethe.attacks import ATTACKS, default_attacks
from lethe.costs import audit_cost
from lethe.registry import UnknownNameError
from lethe.settings import Settings
from lethe.specs import AttackChoice, AuditJobSpec, AuditSpec, ForgetJobSpec
from models.repositories import (
    AdapterRepository,
    AuditRepository,
    BaseModelRepository,
    DatasetRepository,
    JobRepository,
    PageQuery,
)
from models.tables import Audit, BaseModel


def validated_audit_spec(
    spec: AuditSpecIn, forget_kind: str, has_retain: bool, base_model: BaseModel | None, prefix: str = ""
) -> AuditSpec:
    """The audit's attacks with params parsed (defaults filled) and thresholds; InvalidInput naming the field
    (after `prefix`, e.g. "audit.") otherwise. No attacks = every attack that applies to the forget kind (and to
    the retain data). Layers the params name are checked against `base_model`'s depth where it is known."""
    if spec.attacks is None:
        requested = [AttackIn(name=name) for name in default_attacks(forget_kind, has_retain)]
    else:
        requested = spec.attacks
    if not requested:
        raise InvalidInput(f"{prefix}attacks: give at least one attack (allowed: {', '.join(ATTACKS.names())})")
    names = [attack.name for attack in requested]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidInput(f"{prefix}attacks: {', '.join(duplicates)} requested twice; each attack runs once")
    attacks = []
    for index, attack in enumerate(requested):
        where = f"{prefix}attacks[{index}]"
        try:
            attack_spec = ATTACKS.get(attack.name)
        except UnknownNameError as exc:
            raise InvalidInput(f"{where}.name: {exc}") from exc
        refusal = attack_spec.refusal(forget_kind, has_retain)
        if refusal is not None:
            raise InvalidInput(f"{where}.name: {refusal}")
        try:
            params = attack_spec.parse(attack.params)
        except ValidationError as exc:
            errors = [{**e, "loc": (*where.split("."), "params", *e["loc"])} for e in exc.errors()]
            raise InvalidInput(format_validation_errors(errors)) from exc
        check_named_layers(base_model, params.named_layers(), f"{where}.params.")
        attacks.append(AttackChoice(name=attack.name, params=params.model_dump(mode="json")))
    return AuditSpec(attacks=attacks, thresholds=spec.thresholds)


def submit_audit(session: Session, settings: Settings, tenant_id: uuid.UUID, request: AuditRequestIn) -> Audit:
    """Create the audit and its queued job, within the tenant's limits; the caller enqueues the job after the
    commit."""
    adapter = AdapterRepository(session).get(tenant_id, request.adapter_id)
    if adapter is None:
        raise InvalidInput(f"adapter_id: adapter {request.adapter_id} not found")
    forget_job = JobRepository(session).get(tenant_id, adapter.job_id)
    assert forget_job is not None, "an adapter always has the job that made it, of its tenant"
    forget_spec = ForgetJobSpec.model_validate(forget_job.spec)
    evidence_deletion = deletion_of(session, tenant_id, "evidence", forget_job.id)
    if evidence_deletion is not None:
        raise InvalidInput(
            f"adapter_id: the pre-forgetting state of adapter {adapter.id}, which an audit compares against, was "
            f"{deleted(evidence_deletion)}"
        )
    forget_dataset = DatasetRepository(session).get(tenant_id, forget_spec.forget_dataset)
    if forget_dataset is None:
        raise InvalidInput(f"adapter_id: the forget dataset of adapter {adapter.id} no longer exists")
    base_model = BaseModelRepository(session).get_by_name(adapter.base_model)
    spec = validated_audit_spec(request, forget_dataset.kind, bool(forget_spec.retain_datasets), base_model)
    retain = [DatasetRepository(session).get(tenant_id, dataset_id) for dataset_id in forget_spec.retain_datasets]
    retain_rows = sum(dataset.rows for dataset in retain if dataset is not None)
    check_cost(settings, "audit", audit_cost(spec, forget_spec, forget_dataset.rows, retain_rows))
    check_room_for_job(session, settings, tenant_id)
    return AuditRepository(session).create_with_job(
        tenant_id, AuditJobSpec(adapter_id=adapter.id, attacks=spec.attacks, thresholds=spec.thresholds)
    )


def get_audit(session: Session, tenant_id: uuid.UUID, audit_id: uuid.UUID) -> AuditOut:
    audit = _audit(session, tenant_id, audit_id)
    job = JobRepository(session).get(tenant_id, audit.job_id)
    assert job is not None
    return AuditOut(
        id=audit.id,
        adapter_id=audit.adapter_id,
        job_id=job.id,
        **job_state(job),
        thresholds=audit.thresholds,
        attacks=[
            AttackIn(name=attack.name, params=attack.params) for attack in AuditJobSpec.model_validate(job.spec).attacks
        ],
        verdict=audit.verdict,  # type: ignore[arg-type]
        verdict_reasons=audit.verdict_reasons,  # type: ignore[arg-type]
        results=[
            AttackResultOut.model_validate(result, from_attributes=True)
            for result in AuditRepository(session).results(audit.id)
        ],
        diagnostics=[
            DiagnosticOut.model_validate(diagnostic, from_attributes=True)
            for diagnostic in AuditRepository(session).diagnostics(audit.id)
        ],
        skipped=audit.skipped,
        signature=audit.signature,
        signing_key_id=audit.signing_key_id,
        created_at=audit.created_at,
    )


def report_key(session: Session, tenant_id: uuid.UUID, audit_id: uuid.UUID, fmt: str) -> str:
    """The object key of the audit's report as `json` or `html`; NotFound until the audit has succeeded."""
    audit = _audit(session, tenant_id, audit_id)
    key = audit.report_key if fmt == "json" else audit.report_html_key
    if key is None:
        job = JobRepository(session).get(tenant_id, audit.job_id)
        status = job.status if job else "unknown"
        raise NotFound(f"audit {audit_id} has no report yet (its job is {status}; written when it succeeds)")
    return key


def list_audits(
    session: Session,
    tenant_id: uuid.UUID,
    page: PageQuery,
    status: str | None,
    verdict: str | None,
    adapter_id: uuid.UUID | None,
) -> AuditPage:
    """A page of the tenant's audits, newest first."""
    rows = AuditRepository(session).page(tenant_id, page, status, verdict, adapter_id)
    pairs, next_cursor = page_of(rows, page, lambda pair: (pair[0].created_at, pair[0].id))
    return AuditPage(
        items=[
            AuditSummary(
                id=audit.id,
                adapter_id=audit.adapter_id,
                job_id=audit.job_id,
                status=job.status,  # type: ignore[arg-type]
                verdict=audit.verdict,  # type: ignore[arg-type]
                created_at=audit.created_at,
            )
            for audit, job in pairs
        ],
        next_cursor=next_cursor,
    )


def _audit(session: Session, tenant_id: uuid.UUID, audit_id: uuid.UUID) -> Audit:
    audit = AuditRepository(session).get(tenant_id, audit_id)
    if audit is None:
        raise missing(session, tenant_id, "audit", audit_id)
    return audit
