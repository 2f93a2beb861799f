"""Reading jobs, and failing the ones whose worker is gone."""

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TypedDict

from sqlalchemy.orm import Session

from api.errors import Conflict, NotFound
from api.schemas import JobError, JobOut, JobStatus, MetricOut
from models.repositories import AdapterRepository, AuditRepository, JobRepository, MetricRepository
from models.tables import Adapter, Job, utcnow


class JobState(TypedDict):
    """A job's state as a reader sees it: on the job, and on the audit a job runs."""

    status: JobStatus
    stage: str
    progress: float
    error: JobError | None


def job_state(job: Job) -> JobState:
    return JobState(
        status=job.status,  # type: ignore[typeddict-item]
        stage=job.stage,
        progress=job.progress,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
    )


def get_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobOut:
    job = JobRepository(session).get(tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    adapter = AdapterRepository(session).get_for_job(job.id)
    metrics = MetricRepository(session).list_for_job(job.id)
    return JobOut(
        id=job.id,
        kind=job.kind,
        **job_state(job),
        adapter_id=adapter.id if adapter else None,
        audit_ids=_audit_ids(session, job, adapter),
        metrics=[MetricOut.model_validate(m, from_attributes=True) for m in metrics],
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _audit_ids(session: Session, job: Job, adapter: Adapter | None) -> list[uuid.UUID]:
    """A forget job's audits (of its adapter), or an audit job's own audit."""
    repository = AuditRepository(session)
    if job.kind == "audit":
        audit = repository.get_for_job(job.id)
        return [audit.id] if audit else []
    return [audit.id for audit in repository.list_for_adapter(adapter.id)] if adapter else []


def evidence_key(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """The object key of a job's per-example values; NotFound for another tenant's job or one without them."""
    job = JobRepository(session).get(tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job.evidence_key is None:
        raise NotFound(f"job {job_id} has no per-example values (status {job.status}; written when it succeeds)")
    return job.evidence_key


def cancel_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobOut:
    """Cancel a queued or running job; a running one stops at its next progress report and stores nothing."""
    job = JobRepository(session).get(tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if not JobRepository(session).finish(job.id, "cancelled", utcnow()):
        raise Conflict(f"job {job_id} is already {job.status}")
    session.refresh(job)
    return get_job(session, tenant_id, job_id)


def list_jobs(session: Session, tenant_id: uuid.UUID) -> Sequence[Job]:
    return JobRepository(session).list(tenant_id)


def reap_stale_jobs(session: Session, heartbeat_timeout_s: float) -> Sequence[uuid.UUID]:
    """Mark running jobs without a recent heartbeat as failed (worker_lost)."""
    now = utcnow()
    return JobRepository(session).fail_stale(now - timedelta(seconds=heartbeat_timeout_s), now)
