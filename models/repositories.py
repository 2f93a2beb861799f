"""Every SQL query of the catalogue. Repositories flush, never commit: the caller owns the transaction."""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, TypeVarTuple

from sqlalchemy import ColumnElement, Select, and_, case, delete, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from lethe.specs import AuditJobSpec, ForgetJobSpec
from models.tables import (
    Adapter,
    ApiKey,
    Audit,
    AuditDiagnostic,
    AuditResult,
    Base,
    BaseModel,
    CurvePoint,
    Dataset,
    Deletion,
    IdempotencyKey,
    Job,
    JobEvent,
    Metric,
    Tenant,
    Tombstone,
    Worker,
)

RowT = TypeVar("RowT", bound=Base)
ColumnsT = TypeVarTuple("ColumnsT")


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: the job and the attempt number its claim made (the claim's token)."""

    job_id: uuid.UUID
    attempt: int


@dataclass(frozen=True)
class PageQuery:
    """One page of a list, newest first: at most `limit` rows after the cursor's (created_at, id), created at or
    after `created_after` and before `created_before` (a half-open range; either bound may be absent)."""

    limit: int
    after: tuple[datetime, uuid.UUID] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def _paged(
    stmt: Select[*ColumnsT],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    page: PageQuery,
) -> Select[*ColumnsT]:
    """`stmt` ordered by (created_at, id) descending, keyset-paged and cut to `page.limit` + 1 rows (the extra row
    says whether another page follows).

    A keyset rather than an offset: rows created between two pages are newer than the cursor, so they never shift
    the next page (no row seen twice, none skipped); the id breaks ties between rows created in the same
    microsecond."""
    if page.after is not None:
        at, last_id = page.after
        stmt = stmt.where(or_(created_at < at, and_(created_at == at, row_id < last_id)))
    if page.created_after is not None:
        stmt = stmt.where(created_at >= page.created_after)
    if page.created_before is not None:
        stmt = stmt.where(created_at < page.created_before)
    return stmt.order_by(created_at.desc(), row_id.desc()).limit(page.limit + 1)


class Repository(Generic[RowT]):
    """One table's queries, flushed into the caller's session."""

    table: type[RowT]

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: RowT) -> RowT:
        self.session.add(row)
        self.session.flush()
        return row


class TenantScopedRepository(Repository[RowT]):
    """A table whose rows belong to one tenant: a request reads only its own tenant's rows (`get`)."""

    def get(self, tenant_id: uuid.UUID, row_id: uuid.UUID) -> RowT | None:
        """The tenant's row with this id; None for a row of another tenant, exactly as for a missing one."""
        columns = self.table.__table__.c
        return self.session.scalar(select(self.table).where(columns.id == row_id, columns.tenant_id == tenant_id))

    def get_any_tenant(self, row_id: uuid.UUID) -> RowT | None:
        """The row with this id whichever tenant owns it: for the worker and admin code, never a tenant's request."""
        return self.session.get(self.table, row_id)


class TenantRepository(Repository[Tenant]):
    table = Tenant

    def get_by_name(self, name: str) -> Tenant | None:
        return self.session.scalar(select(Tenant).where(Tenant.name == name))

    def get_or_create(self, name: str) -> Tenant:
        tenant = self.get_by_name(name)
        return tenant if tenant is not None else self.add(Tenant(name=name))

    def lock(self, tenant_id: uuid.UUID) -> None:
        """Hold the tenant's row until the transaction ends, so that a quota's check and the write it allows are
        one step: another transaction locking the same tenant waits here until this one commits or rolls back.

        Postgres: SELECT ... FOR NO KEY UPDATE on the tenant's row: other tenants are not held up, nor are inserts
        of rows that only reference the tenant (their foreign-key check takes a KEY SHARE lock). SQLite has no row
        locks, and pysqlite runs a SELECT outside any transaction; a no-op UPDATE opens the transaction and takes
        the database's write lock instead (SQLite writers wait for each other, busy_timeout in models/db.py).
        """
        if self.session.get_bind().dialect.name == "sqlite":
            self.session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name=Tenant.name))
        else:
            self.session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))

    def with_retention(self) -> Sequence[Tenant]:
        """Tenants that keep evidence for a limited number of days."""
        return self.session.scalars(
            select(Tenant).where(Tenant.evidence_retention_days.is_not(None)).order_by(Tenant.name)
        ).all()

    def stored_bytes(self, tenant_id: uuid.UUID) -> int:
        """Bytes the tenant stores: its datasets, adapters, jobs' evidence and audits' reports (the catalogue's
        sizes of them)."""
        sized = [
            (Dataset.size_bytes, Dataset.tenant_id),
            (Adapter.size_bytes, Adapter.tenant_id),
            (Job.evidence_size_bytes, Job.tenant_id),
            (Audit.report_size_bytes, Audit.tenant_id),
        ]
        return sum(
            int(self.session.scalar(select(func.coalesce(func.sum(size), 0)).where(owner == tenant_id)) or 0)
            for size, owner in sized
        )


class ApiKeyRepository(Repository[ApiKey]):
    table = ApiKey

    def get_active_by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))

    def create(self, tenant_id: uuid.UUID, prefix: str, key_hash: str, scopes: list[str]) -> ApiKey:
        return self.add(ApiKey(tenant_id=tenant_id, prefix=prefix, key_hash=key_hash, scopes=scopes))


class DatasetRepository(TenantScopedRepository[Dataset]):
    table = Dataset

    def page(self, tenant_id: uuid.UUID, page: PageQuery, kind: str | None = None) -> Sequence[Dataset]:
        """A page of the tenant's datasets (of `kind`), newest first (`page.limit` + 1 rows at most)."""
        stmt = select(Dataset).where(Dataset.tenant_id == tenant_id)
        if kind is not None:
            stmt = stmt.where(Dataset.kind == kind)
        return self.session.scalars(_paged(stmt, Dataset.created_at, Dataset.id, page)).all()


class BaseModelRepository(Repository[BaseModel]):
    table = BaseModel

    def get_by_name(self, name: str) -> BaseModel | None:
        return self.session.scalar(select(BaseModel).where(BaseModel.name == name))

    def list(self) -> Sequence[BaseModel]:
        return self.session.scalars(select(BaseModel).order_by(BaseModel.name)).all()

    def upsert(
        self,
        name: str,
        source: str,
        description: str,
        n_layers: int | None,
        revision: str | None = None,
        requested_revision: str | None = None,
        weights_sha256: str | None = None,
    ) -> BaseModel:
        """Register `name`, or re-point it to another source (every field replaced)."""
        fields = {
            "source": source,
            "description": description,
            "n_layers": n_layers,
            "revision": revision,
            "requested_revision": requested_revision,
            "weights_sha256": weights_sha256,
        }
        base_model = self.get_by_name(name)
        if base_model is None:
            return self.add(BaseModel(name=name, **fields))
        for field, value in fields.items():
            setattr(base_model, field, value)
        self.session.flush()
        return base_model


class JobRepository(TenantScopedRepository[Job]):
    """A job's state and its events. Every transition is a guarded UPDATE that says whether it happened, and one
    that happened appends its event, so the events are the job's whole history (and the SSE stream)."""

    table = Job

    def create_queued(self, tenant_id: uuid.UUID, spec: ForgetJobSpec | AuditJobSpec) -> Job:
        """A new job of the spec's kind, status queued, with its first event; the one way a job comes to be."""
        payload: dict[str, Any]
        if isinstance(spec, ForgetJobSpec):
            kind, payload = "forget", {"method": spec.method.name}
        else:
            kind, payload = "audit", {"attacks": [attack.name for attack in spec.attacks]}
        job = self.add(
            Job(
                tenant_id=tenant_id,
                kind=kind,
                status="queued",
                stage="queued",
                progress=0.0,
                spec=spec.model_dump(mode="json"),
            )
        )
        JobEventRepository(self.session).append(job.id, "queued", payload)
        return job

    def page(
        self, tenant_id: uuid.UUID, page: PageQuery, status: str | None = None, kind: str | None = None
    ) -> Sequence[Job]:
        """A page of the tenant's jobs (with `status`, of `kind`), newest first (`page.limit` + 1 rows at most)."""
        stmt = select(Job).where(Job.tenant_id == tenant_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        if kind is not None:
            stmt = stmt.where(Job.kind == kind)
        return self.session.scalars(_paged(stmt, Job.created_at, Job.id, page)).all()

    def open_jobs(self, tenant_id: uuid.UUID) -> Sequence[Job]:
        """The tenant's queued and running jobs, oldest first."""
        return self.session.scalars(
            select(Job)
            .where(Job.tenant_id == tenant_id, Job.status.in_(["queued", "running"]))
            .order_by(Job.created_at)
        ).all()

    def evidence_expired(self, tenant_id: uuid.UUID, finished_before: datetime, limit: int) -> Sequence[Job]:
        """The tenant's finished jobs that ended before `finished_before` and still point at evidence, oldest first."""
        return self.session.scalars(
            select(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.status.in_(["succeeded", "failed", "cancelled"]),
                Job.finished_at < finished_before,
                Job.evidence_key.is_not(None),
            )
            .order_by(Job.finished_at)
            .limit(limit)
        ).all()

    def drop_evidence(self, job_id: uuid.UUID) -> bool:
        """Unpoint a finished job from its evidence objects (deleted by retention); False if it no longer had any."""
        result = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id, Job.evidence_key.is_not(None), Job.status.in_(["succeeded", "failed", "cancelled"])
            )
            .values(evidence_key=None, evidence_size_bytes=0)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def count_active(self, tenant_id: uuid.UUID) -> int:
        """The tenant's queued and running jobs, forget and audit alike."""
        return (
            self.session.scalar(
                select(func.count()).where(Job.tenant_id == tenant_id, Job.status.in_(["queued", "running"]))
            )
            or 0
        )

    def claim(self, job_id: uuid.UUID, now: datetime) -> Claim | None:
        """Move this queued job to running; None when another delivery already took it."""
        return self._claim(Job.id == job_id, now)

    def claim_next(self, kind: str, now: datetime) -> Claim | None:
        """Move the next queued job of `kind` to running, chosen fairly across tenants; None when none is queued.

        Fair: the tenant with the fewest running jobs first, then the tenant served least recently (its latest
        claim; never served comes first), then the tenant's oldest job. One worker alternates between two
        tenants' backlogs instead of running the first tenant's ten jobs before the other's one. On Postgres the
        candidate row is locked with SKIP LOCKED, so concurrent workers each take a different job; SQLite runs one
        writer at a time, so the conditional UPDATE is atomic there.
        """
        candidate, tenant_jobs = aliased(Job), aliased(Job)
        same_tenant = tenant_jobs.tenant_id == candidate.tenant_id
        running = select(func.count()).where(same_tenant, tenant_jobs.status == "running").scalar_subquery()
        last_claimed = select(func.max(tenant_jobs.started_at)).where(same_tenant).scalar_subquery()
        next_job = (
            select(candidate.id)
            .where(candidate.status == "queued", candidate.kind == kind)
            .order_by(running, last_claimed.nulls_first(), candidate.created_at)
            .limit(1)
            .with_for_update(skip_locked=True, of=candidate)
            .scalar_subquery()
        )
        return self._claim(Job.id == next_job, now)

    def _claim(self, which: ColumnElement[bool], now: datetime) -> Claim | None:
        row = self.session.execute(
            update(Job)
            .where(which, Job.status == "queued")
            .values(
                status="running",
                stage="starting",
                started_at=now,
                heartbeat_at=now,
                progress_at=now,
                attempts=Job.attempts + 1,
            )
            .returning(Job.id, Job.attempts)
        ).one_or_none()
        return Claim(row.id, row.attempts) if row is not None else None

    def set_progress(self, claim: Claim, stage: str, progress: float, now: datetime) -> bool:
        """Record progress of a running job; False when the claim is no longer the job's (cancelled, failed, or
        re-queued and claimed again). `progress_at` moves only when the job advanced: a new stage or a larger
        fraction, so a loop that reports the same point over and over counts as stalled."""
        advanced = or_(Job.stage != stage, Job.progress < progress)
        result = self.session.execute(
            update(Job)
            .where(*_held(claim))
            .values(
                stage=stage,
                progress=progress,
                heartbeat_at=now,
                progress_at=case((advanced, now), else_=Job.progress_at),
            )
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def heartbeat(self, claim: Claim, now: datetime) -> bool:
        """Beat for a running job; False when the claim is no longer the job's."""
        result = self.session.execute(update(Job).where(*_held(claim)).values(heartbeat_at=now))
        return result.rowcount == 1  # type: ignore[attr-defined]

    def finish(
        self,
        job_id: uuid.UUID,
        status: str,
        now: datetime,
        event: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Close a job that is still open (queued or running) and append its `status` event with `event` as
        payload; False, and nothing written, if it was already closed. With `attempt` (a worker's claim), only
        while the job is still running that attempt: a worker whose job was re-queued cannot close the new one."""
        return self._close(_closable(job_id, attempt), job_id, status, now, event, error_code, error_message)

    def _close(
        self,
        guard: tuple[ColumnElement[bool], ...],
        job_id: uuid.UUID,
        status: str,
        now: datetime,
        event: dict[str, Any] | None,
        error_code: str | None,
        error_message: str | None,
    ) -> bool:
        result = self.session.execute(
            update(Job)
            .where(*guard)
            .values(
                status=status,
                stage="done" if status == "succeeded" else status,
                progress=1.0 if status == "succeeded" else Job.progress,
                finished_at=now,
                error_code=error_code,
                error_message=error_message,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        JobEventRepository(self.session).append(job_id, status, event)
        return True

    def fail(self, job_id: uuid.UUID, code: str, message: str, now: datetime, attempt: int | None = None) -> bool:
        """Close an open job as failed with an error code the user can act on; False if it was already closed
        (or, with `attempt`, is no longer running that attempt)."""
        return self._fail(_closable(job_id, attempt), job_id, code, message, now)

    def set_evidence(self, claim: Claim, object_key: str, size_bytes: int) -> bool:
        """Point the job at its per-example values, with the bytes of all its evidence objects together; False
        when the claim is no longer the job's."""
        result = self.session.execute(
            update(Job).where(*_held(claim)).values(evidence_key=object_key, evidence_size_bytes=size_bytes)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def set_runtime(self, claim: Claim, device: str, precision: str) -> bool:
        """Record the device and precision the claim's attempt runs with; False when the claim is no longer the
        job's."""
        result = self.session.execute(update(Job).where(*_held(claim)).values(device=device, precision=precision))
        return result.rowcount == 1  # type: ignore[attr-defined]

    def set_forgetting(self, claim: Claim, forgetting: dict[str, Any]) -> bool:
        """Record the outcome of the job's forgetting (`lethe.forgetting.Forgetting.as_dict`); False when the claim
        is no longer the job's."""
        result = self.session.execute(update(Job).where(*_held(claim)).values(forgetting=forgetting))
        return result.rowcount == 1  # type: ignore[attr-defined]

    def mark_sent(self, job_id: uuid.UUID, now: datetime) -> None:
        """Record that a message for this queued job is being sent (the relay counts its timeout from here)."""
        self.session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(sent_at=now))

    def lost(self, heartbeat_before: datetime) -> Sequence[Job]:
        """Running jobs whose worker has not beaten since `heartbeat_before`."""
        return self.session.scalars(
            select(Job).where(Job.status == "running", Job.heartbeat_at < heartbeat_before).order_by(Job.created_at)
        ).all()

    def stalled(self, progress_before: datetime) -> Sequence[Job]:
        """Running jobs whose progress has not advanced since `progress_before`."""
        return self.session.scalars(
            select(Job).where(Job.status == "running", Job.progress_at < progress_before).order_by(Job.created_at)
        ).all()

    def fail_lost(self, job: Job, heartbeat_before: datetime, message: str, now: datetime) -> bool:
        """Fail a running job whose worker is gone (`worker_lost`); False if meanwhile it beat, finished or was
        re-queued."""
        guard = (*_held(Claim(job.id, job.attempts)), Job.heartbeat_at < heartbeat_before)
        return self._fail(guard, job.id, "worker_lost", message, now)

    def fail_stalled(self, job: Job, progress_before: datetime, message: str, now: datetime) -> bool:
        """Fail a running job whose progress stopped (`stalled`); False if meanwhile it advanced, finished or was
        re-queued."""
        guard = (*_held(Claim(job.id, job.attempts)), Job.progress_at < progress_before)
        return self._fail(guard, job.id, "stalled", message, now)

    def _fail(
        self, guard: tuple[ColumnElement[bool], ...], job_id: uuid.UUID, code: str, message: str, now: datetime
    ) -> bool:
        event = {"error_code": code, "error_message": message[:500]}
        return self._close(guard, job_id, "failed", now, event, code, message[:2000])

    def requeue(self, job: Job, heartbeat_before: datetime, reason: str) -> bool:
        """Put a running job whose worker is gone back in the queue (unsent, so the relay sends it at once) and
        append a `requeued` event; False if meanwhile it beat, finished or was claimed again."""
        result = self.session.execute(
            update(Job)
            .where(*_held(Claim(job.id, job.attempts)), Job.heartbeat_at < heartbeat_before)
            .values(status="queued", stage="queued", progress=0.0, heartbeat_at=None, progress_at=None, sent_at=None)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        JobEventRepository(self.session).append(job.id, "requeued", {"attempt": job.attempts, "reason": reason})
        return True

    def unsent(self, kinds: Sequence[str], sent_before: datetime) -> Sequence[Job]:
        """Queued jobs of `kinds` never sent, or last sent before `sent_before` and still not claimed: the relay's
        work."""
        return self.session.scalars(
            select(Job)
            .where(
                Job.status == "queued",
                Job.kind.in_(kinds),
                or_(Job.sent_at.is_(None), Job.sent_at < sent_before),
            )
            .order_by(Job.created_at)
        ).all()


def _held(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    """The condition for a worker's write: the job is running, and running the attempt the worker claimed."""
    return Job.id == claim.job_id, Job.status == "running", Job.attempts == claim.attempt


def _closable(job_id: uuid.UUID, attempt: int | None) -> tuple[ColumnElement[bool], ...]:
    """The condition for closing a job: open (queued or running), or with `attempt`, held by that attempt."""
    if attempt is not None:
        return _held(Claim(job_id, attempt))
    return Job.id == job_id, Job.status.in_(["queued", "running"])


class JobEventRepository(Repository[JobEvent]):
    table = JobEvent

    def append(self, job_id: uuid.UUID, type: str, payload: dict[str, Any] | None = None) -> JobEvent:
        last = self.session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
        return self.add(JobEvent(job_id=job_id, seq=(last or 0) + 1, type=type, payload=payload or {}))

    def list(self, job_id: uuid.UUID) -> Sequence[JobEvent]:
        return self.session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()

    def after(self, job_id: uuid.UUID, after: int, limit: int) -> Sequence[JobEvent]:
        """Up to `limit` of the job's events with a seq above `after`, in order (the unique (job_id, seq) index
        serves it)."""
        return self.session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq).limit(limit)
        ).all()


class MetricRepository(Repository[Metric]):
    table = Metric

    def add_many(self, metrics: Iterable[Metric]) -> None:
        self.session.add_all(list(metrics))
        self.session.flush()

    def list_for_job(self, job_id: uuid.UUID) -> Sequence[Metric]:
        return self.session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)).all()


class CurvePointRepository(Repository[CurvePoint]):
    table = CurvePoint

    def add_many(self, points: Iterable[CurvePoint]) -> None:
        self.session.add_all(list(points))
        self.session.flush()

    def list_for_job(self, job_id: uuid.UUID) -> Sequence[CurvePoint]:
        """A job's curve points by split, metric and step."""
        return self.session.scalars(
            select(CurvePoint)
            .where(CurvePoint.job_id == job_id)
            .order_by(CurvePoint.split, CurvePoint.name, CurvePoint.step)
        ).all()


class AdapterRepository(TenantScopedRepository[Adapter]):
    table = Adapter

    def get_for_job(self, job_id: uuid.UUID) -> Adapter | None:
        return self.session.scalar(select(Adapter).where(Adapter.job_id == job_id))

    def page(self, tenant_id: uuid.UUID, page: PageQuery, base_model: str | None = None) -> Sequence[Adapter]:
        """A page of the tenant's adapters (on `base_model`), newest first (`page.limit` + 1 rows at most)."""
        stmt = select(Adapter).where(Adapter.tenant_id == tenant_id)
        if base_model is not None:
            stmt = stmt.where(Adapter.base_model == base_model)
        return self.session.scalars(_paged(stmt, Adapter.created_at, Adapter.id, page)).all()

    def children(self, adapter_id: uuid.UUID) -> Sequence[Adapter]:
        """Adapters stacked directly on this one (their parent_adapter_id is its id)."""
        return self.session.scalars(
            select(Adapter).where(Adapter.parent_adapter_id == adapter_id).order_by(Adapter.created_at)
        ).all()

    def ancestors(self, adapter: Adapter) -> list[Adapter]:
        """The adapters `adapter` descends from, its parent first, up to the root (one query per generation: a
        lineage is as long as the requests a user stacked)."""
        chain: list[Adapter] = []
        seen = {adapter.id}
        parent_id = adapter.parent_adapter_id
        while parent_id is not None:
            parent = self.get(adapter.tenant_id, parent_id)
            # A parent is written before its child, so a lineage has no cycle; the guard keeps a corrupt one finite.
            if parent is None or parent.id in seen:
                break
            chain.append(parent)
            seen.add(parent.id)
            parent_id = parent.parent_adapter_id
        return chain


class AuditRepository(TenantScopedRepository[Audit]):
    table = Audit

    def create_with_job(self, tenant_id: uuid.UUID, spec: AuditJobSpec) -> Audit:
        """A queued audit job with its validated `spec`, and its audit row."""
        job = JobRepository(self.session).create_queued(tenant_id, spec)
        return self.add(
            Audit(
                tenant_id=tenant_id,
                job_id=job.id,
                adapter_id=spec.adapter_id,
                thresholds=spec.thresholds.model_dump(mode="json"),
            )
        )

    def get_for_job(self, job_id: uuid.UUID) -> Audit | None:
        return self.session.scalar(select(Audit).where(Audit.job_id == job_id))

    def page(
        self,
        tenant_id: uuid.UUID,
        page: PageQuery,
        status: str | None = None,
        verdict: str | None = None,
        adapter_id: uuid.UUID | None = None,
    ) -> Sequence[tuple[Audit, Job]]:
        """A page of the tenant's audits with their jobs (the audit's status is its job's), newest first
        (`page.limit` + 1 rows at most)."""
        stmt = select(Audit, Job).join(Job, Job.id == Audit.job_id).where(Audit.tenant_id == tenant_id)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        if verdict is not None:
            stmt = stmt.where(Audit.verdict == verdict)
        if adapter_id is not None:
            stmt = stmt.where(Audit.adapter_id == adapter_id)
        rows = self.session.execute(_paged(stmt, Audit.created_at, Audit.id, page)).all()
        return [(audit, job) for audit, job in rows]

    def list_for_adapter(self, adapter_id: uuid.UUID) -> Sequence[Audit]:
        return self.session.scalars(
            select(Audit).where(Audit.adapter_id == adapter_id).order_by(Audit.created_at)
        ).all()

    def record(
        self,
        audit_id: uuid.UUID,
        results: Iterable[AuditResult],
        verdict: str,
        report_key: str,
        report_html_key: str,
        signature: str,
        signing_key_id: str,
        skipped: list[dict[str, Any]],
        report_size_bytes: int,
        verdict_reasons: list[str],
    ) -> None:
        """Write an audit's per-attack results, verdict and signed report keys (one transaction with the job)."""
        self.session.add_all(list(results))
        self.session.execute(
            update(Audit)
            .where(Audit.id == audit_id)
            .values(
                verdict=verdict,
                verdict_reasons=verdict_reasons,
                report_key=report_key,
                report_html_key=report_html_key,
                signature=signature,
                signing_key_id=signing_key_id,
                skipped=skipped,
                report_size_bytes=report_size_bytes,
            )
        )
        self.session.flush()

    def results(self, audit_id: uuid.UUID) -> Sequence[AuditResult]:
        return self.session.scalars(
            select(AuditResult).where(AuditResult.audit_id == audit_id).order_by(AuditResult.id)
        ).all()

    def add_diagnostics(self, diagnostics: Iterable[AuditDiagnostic]) -> None:
        """Write an audit's diagnostic results (in the transaction that records its verdict)."""
        self.session.add_all(list(diagnostics))
        self.session.flush()

    def diagnostics(self, audit_id: uuid.UUID) -> Sequence[AuditDiagnostic]:
        return self.session.scalars(
            select(AuditDiagnostic).where(AuditDiagnostic.audit_id == audit_id).order_by(AuditDiagnostic.id)
        ).all()


class WorkerRepository(Repository[Worker]):
    table = Worker

    def beat(self, worker_id: str, now: datetime) -> None:
        """Record that worker `worker_id` is alive at `now` (its first beat records when it started)."""
        worker = self.session.get(Worker, worker_id)
        if worker is None:
            self.add(Worker(id=worker_id, started_at=now, beat_at=now))
        else:
            worker.beat_at = now
            self.session.flush()

    def alive_since(self, since: datetime) -> Sequence[Worker]:
        """Workers that beat at or after `since`, latest beat first."""
        return self.session.scalars(select(Worker).where(Worker.beat_at >= since).order_by(Worker.beat_at.desc())).all()


class IdempotencyKeyRepository(Repository[IdempotencyKey]):
    table = IdempotencyKey

    def get(self, tenant_id: uuid.UUID, operation: str, key: str) -> IdempotencyKey | None:
        return self.session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.operation == operation, IdempotencyKey.key == key
            )
        )

    def delete(self, key_id: uuid.UUID) -> None:
        self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == key_id))

    def delete_expired(self, tenant_id: uuid.UUID, created_before: datetime) -> None:
        """Forget the tenant's keys stored before `created_before`, so they can be used again."""
        self.session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.created_at < created_before
            )
        )


class DeletionRepository(Repository[Deletion]):
    """Deletions: the rows a deleted resource takes with it, the receipts and tombstones left in their place.

    The `purge_*` methods delete one resource's own rows, children before parents (the foreign keys' order), and
    return how many rows each table lost; what a resource takes with it beyond its own rows (an adapter's audits, a
    job's adapter) is the service's cascade (api/services/deletions.py)."""

    table = Deletion

    def purge_dataset(self, dataset_id: uuid.UUID) -> dict[str, int]:
        return {"datasets": self._delete(delete(Dataset).where(Dataset.id == dataset_id))}

    def purge_job(self, job_id: uuid.UUID) -> dict[str, int]:
        """A job's events, metrics, curve points and the job (its adapter or audit row must be gone first)."""
        return {
            "job_events": self._delete(delete(JobEvent).where(JobEvent.job_id == job_id)),
            "metrics": self._delete(delete(Metric).where(Metric.job_id == job_id)),
            "curve_points": self._delete(delete(CurvePoint).where(CurvePoint.job_id == job_id)),
            "jobs": self._delete(delete(Job).where(Job.id == job_id)),
        }

    def purge_adapter(self, adapter_id: uuid.UUID) -> dict[str, int]:
        """An adapter's row (its audits and child adapters must be gone first)."""
        return {"adapters": self._delete(delete(Adapter).where(Adapter.id == adapter_id))}

    def purge_audit(self, audit_id: uuid.UUID) -> dict[str, int]:
        """An audit's results, diagnostics and row (its job is purged after, with `purge_job`)."""
        return {
            "audit_results": self._delete(delete(AuditResult).where(AuditResult.audit_id == audit_id)),
            "audit_diagnostics": self._delete(delete(AuditDiagnostic).where(AuditDiagnostic.audit_id == audit_id)),
            "audits": self._delete(delete(Audit).where(Audit.id == audit_id)),
        }

    def purge_idempotency_keys(self, tenant_id: uuid.UUID, operation: str, field: str, value: uuid.UUID) -> int:
        """The tenant's stored responses of `operation` whose `field` names `value`: a retry must not be answered
        with a resource that is gone."""
        return self._delete(
            delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id,
                IdempotencyKey.operation == operation,
                IdempotencyKey.response_body[field].as_string() == str(value),
            )
        )

    def _delete(self, statement: Any) -> int:
        return int(self.session.execute(statement).rowcount)  # type: ignore[attr-defined]

    def bury(self, deletion: Deletion, resources: Iterable[tuple[str, uuid.UUID]]) -> None:
        """Record the deletion and a tombstone for each resource it removed."""
        self.add(deletion)
        self.session.add_all(
            Tombstone(
                tenant_id=deletion.tenant_id,
                resource=resource,
                resource_id=resource_id,
                deletion_id=deletion.id,
                deleted_at=deletion.deleted_at,
            )
            for resource, resource_id in resources
        )
        self.session.flush()

    def tombstone(self, tenant_id: uuid.UUID, resource: str, resource_id: uuid.UUID) -> Tombstone | None:
        """The tenant's tombstone of this resource; None for another tenant's, exactly as for one never deleted."""
        return self.session.scalar(
            select(Tombstone).where(
                Tombstone.tenant_id == tenant_id, Tombstone.resource == resource, Tombstone.resource_id == resource_id
            )
        )

    def get_for_tenant(self, tenant_id: uuid.UUID, deletion_id: uuid.UUID) -> Deletion | None:
        return self.session.scalar(select(Deletion).where(Deletion.id == deletion_id, Deletion.tenant_id == tenant_id))

    def page(
        self, tenant_id: uuid.UUID, page: PageQuery, resource: str | None = None, reason: str | None = None
    ) -> Sequence[Deletion]:
        """A page of the tenant's deletions, newest first (`page.limit` + 1 rows at most)."""
        stmt = select(Deletion).where(Deletion.tenant_id == tenant_id)
        if resource is not None:
            stmt = stmt.where(Deletion.resource == resource)
        if reason is not None:
            stmt = stmt.where(Deletion.reason == reason)
        return self.session.scalars(_paged(stmt, Deletion.deleted_at, Deletion.id, page)).all()

    def unfinished(self, deleted_before: datetime, limit: int) -> Sequence[Deletion]:
        """Deletions committed before `deleted_before` whose objects are not all confirmed gone, oldest first."""
        return self.session.scalars(
            select(Deletion)
            .where(Deletion.deleted_at < deleted_before, func.json_array_length(Deletion.pending_keys) > 0)
            .order_by(Deletion.deleted_at)
            .limit(limit)
        ).all()

    def finish(self, deletion_id: uuid.UUID) -> None:
        """Record that every object of the deletion is gone from the store."""
        self.session.execute(update(Deletion).where(Deletion.id == deletion_id).values(pending_keys=[]))
