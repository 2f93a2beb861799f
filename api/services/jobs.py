"""Reading and cancelling jobs; re-queuing or failing the ones whose worker is gone or stuck; the relay's queries."""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TypedDict

from sqlalchemy.orm import Session

from api.errors import Conflict, Gone, NotFound
from api.pagination import page_of
from api.schemas import (
    CurvePointOut,
    ForgettingOut,
    JobError,
    JobOut,
    JobPage,
    JobStatus,
    JobSummary,
    MetricOut,
)
from api.services.deletions import deleted, deletion_of, missing
from lethe.forgetting import Forgetting
from lethe.queue import JOB_KINDS
from lethe.settings import Settings
from models.db import UnitOfWork
from models.repositories import (
    AdapterRepository,
    AuditRepository,
    CurvePointRepository,
    DeletionRepository,
    JobRepository,
    MetricRepository,
    PageQuery,
)
from models.tables import Adapter, Job, utcnow
from storage import ObjectStore
from storage.keys import checkpoint_keys

log = logging.getLogger("lethe.api")


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
        raise missing(session, tenant_id, "job", job_id)
    adapter = AdapterRepository(session).get_for_job(job.id)
    evidence_deletion = DeletionRepository(session).tombstone(tenant_id, "evidence", job.id)
    metrics = MetricRepository(session).list_for_job(job.id)
    curves = CurvePointRepository(session).list_for_job(job.id)
    return JobOut(
        id=job.id,
        kind=job.kind,
        **job_state(job),
        adapter_id=adapter.id if adapter else None,
        audit_ids=_audit_ids(session, job, adapter),
        metrics=[MetricOut.model_validate(m, from_attributes=True) for m in metrics],
        curves=[CurvePointOut.model_validate(p, from_attributes=True) for p in curves],
        forgetting=_forgetting(job),
        device=job.device,
        precision=job.precision,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        evidence_deleted_at=evidence_deletion.deleted_at if evidence_deletion is not None else None,
    )


def _forgetting(job: Job) -> ForgettingOut | None:
    if job.forgetting is None:
        return None
    forgetting = Forgetting.from_dict(job.forgetting)
    return ForgettingOut.model_validate({**forgetting.as_dict(), "summary": forgetting.summary()})


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
        raise missing(session, tenant_id, "job", job_id)
    if job.evidence_key is None:
        deletion = deletion_of(session, tenant_id, "evidence", job_id)
        if deletion is not None:
            raise Gone(f"the per-example values of job {job_id} were {deleted(deletion)}")
        raise NotFound(f"job {job_id} has no per-example values (status {job.status}; written when it succeeds)")
    return job.evidence_key


def cancel_job(work: UnitOfWork, store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobOut:
    """Cancel a queued or running job; a running one stops at its next progress report and stores nothing.

    Its checkpoint (a job re-queued after its worker died has one) is deleted once the cancel is committed: a
    queued job has no worker that would.
    """
    session = work.session
    job = JobRepository(session).get(tenant_id, job_id)
    if job is None:
        raise missing(session, tenant_id, "job", job_id)
    if not JobRepository(session).finish(job.id, "cancelled", utcnow()):
        raise Conflict(f"job {job_id} is already {job.status}")
    work.after_commit(partial(delete_checkpoint, store, job.tenant_id, job.id))
    session.refresh(job)
    return get_job(session, tenant_id, job_id)


def delete_checkpoint(store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Delete a job that has ended's checkpoint, if it has one (a resume point no attempt will use)."""
    for key in checkpoint_keys(tenant_id, job_id):
        store.delete(key)


def delete_checkpoints_of(session: Session, store: ObjectStore, job_ids: Sequence[uuid.UUID]) -> None:
    """Delete the checkpoints of jobs the reaper ended (failed with worker_lost or stalled): no worker will."""
    for job_id in job_ids:
        job = JobRepository(session).get_any_tenant(job_id)
        if job is not None:
            try:
                delete_checkpoint(store, job.tenant_id, job.id)
            except Exception:
                log.exception("job %s: could not delete its checkpoint", job_id)


def list_jobs(session: Session, tenant_id: uuid.UUID, page: PageQuery, status: str | None, kind: str | None) -> JobPage:
    """A page of the tenant's jobs, newest first."""
    rows, next_cursor = page_of(JobRepository(session).page(tenant_id, page, status, kind), page, _sort_key)
    return JobPage(items=[JobSummary.model_validate(j, from_attributes=True) for j in rows], next_cursor=next_cursor)


def _sort_key(job: Job) -> tuple[datetime, uuid.UUID]:
    return job.created_at, job.id


@dataclass
class Reaped:
    """What a reaper pass did: (job, the attempt its worker lost) re-queued, (job, error code) failed."""

    requeued: list[tuple[uuid.UUID, int]] = field(default_factory=list)
    failed: list[tuple[uuid.UUID, str]] = field(default_factory=list)


def reap_stale_jobs(session: Session, settings: Settings, now: datetime) -> Reaped:
    """Re-queue running jobs whose worker is gone, failing those that used up their attempts (worker_lost), and
    fail running jobs whose progress stalled while their worker still beats (stalled)."""
    jobs, reaped = JobRepository(session), Reaped()
    heartbeat_before = now - timedelta(seconds=settings.heartbeat_timeout_s)
    silent = f"no heartbeat for {settings.heartbeat_timeout_s:g} s"
    for job in jobs.lost(heartbeat_before):
        if job.attempts < settings.max_attempts:
            if jobs.requeue(job, heartbeat_before, f"worker_lost: {silent}"):
                reaped.requeued.append((job.id, job.attempts))
        else:
            message = f"the worker was lost on each of the job's {job.attempts} attempts ({silent}); not retried"
            if jobs.fail_lost(job, heartbeat_before, message, now):
                reaped.failed.append((job.id, "worker_lost"))
    # A stall is not retried: the worker is alive but the job stopped advancing, and the same spec, rows and seed on
    # another attempt would most likely hang at the same point, holding a worker for the timeout again each time.
    stall = settings.stall_timeout_s
    progress_before = now - timedelta(seconds=stall)
    for job in jobs.stalled(progress_before):
        message = f"no progress for {stall:g} s in stage {job.stage} while the worker was alive; not retried"
        if jobs.fail_stalled(job, progress_before, message, now):
            reaped.failed.append((job.id, "stalled"))
    return reaped


@dataclass(frozen=True)
class Unsent:
    """A queued job whose message is to be sent: never sent (new or re-queued), or sent and not claimed in time."""

    job_id: uuid.UUID
    kind: str
    sent_at: datetime | None


def unsent_jobs(session: Session, redeliver_after_s: float, now: datetime) -> list[Unsent]:
    """Queued jobs to (re-)send: never sent, or not claimed `redeliver_after_s` after their last message. Only
    the kinds a worker has a task for: a job of another kind could never be sent, and would stop every pass."""
    sent_before = now - timedelta(seconds=redeliver_after_s)
    return [Unsent(job.id, job.kind, job.sent_at) for job in JobRepository(session).unsent(JOB_KINDS, sent_before)]


def mark_sent(session: Session, job_ids: Sequence[uuid.UUID], now: datetime) -> None:
    jobs = JobRepository(session)
    for job_id in job_ids:
        jobs.mark_sent(job_id, now)
