"""Every SQL query of the catalogue. Repositories flush, never commit: the caller owns the transaction."""

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lethe.specs import AuditJobSpec
from models.tables import Adapter, ApiKey, Audit, AuditResult, BaseLM, Dataset, Job, JobEvent, Metric, Tenant


class TenantRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get_by_name(self, name: str) -> Tenant | None:
        return self.session.scalar(select(Tenant).where(Tenant.name == name))

    def get_or_create(self, name: str) -> Tenant:
        tenant = self.get_by_name(name)
        if tenant is None:
            tenant = Tenant(name=name)
            self.session.add(tenant)
            self.session.flush()
        return tenant


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get_active_by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))

    def create(self, tenant_id: uuid.UUID, prefix: str, key_hash: str, scopes: list[str]) -> ApiKey:
        api_key = ApiKey(tenant_id=tenant_id, prefix=prefix, key_hash=key_hash, scopes=scopes)
        self.session.add(api_key)
        self.session.flush()
        return api_key


class DatasetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get(self, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset | None:
        return self.session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))

    def get_by_id(self, dataset_id: uuid.UUID) -> Dataset | None:
        return self.session.get(Dataset, dataset_id)

    def list(self, tenant_id: uuid.UUID) -> Sequence[Dataset]:
        return self.session.scalars(
            select(Dataset).where(Dataset.tenant_id == tenant_id).order_by(Dataset.created_at.desc())
        ).all()


class BaseLMRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get_by_name(self, name: str) -> BaseLM | None:
        return self.session.scalar(select(BaseLM).where(BaseLM.name == name))

    def list(self) -> Sequence[BaseLM]:
        return self.session.scalars(select(BaseLM).order_by(BaseLM.name)).all()

    def upsert(self, name: str, source: str, description: str, revision: str | None = None) -> BaseLM:
        base_lm = self.get_by_name(name)
        if base_lm is None:
            base_lm = BaseLM(name=name, source=source, description=description, revision=revision)
            self.session.add(base_lm)
        else:
            base_lm.source, base_lm.description, base_lm.revision = source, description, revision
        self.session.flush()
        return base_lm


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        return job

    def get(self, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
        return self.session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))

    def get_by_id(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id)

    def list(self, tenant_id: uuid.UUID, limit: int = 100) -> Sequence[Job]:
        return self.session.scalars(
            select(Job).where(Job.tenant_id == tenant_id).order_by(Job.created_at.desc()).limit(limit)
        ).all()

    def claim(self, job_id: uuid.UUID, now: datetime) -> bool:
        """Move a queued job to running; False when another delivery already took it."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(
                status="running",
                stage="starting",
                started_at=now,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
            )
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def set_progress(self, job_id: uuid.UUID, stage: str, progress: float, now: datetime) -> bool:
        """Record progress of a running job; False when the job is no longer running (cancelled, reaped)."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(stage=stage, progress=progress, heartbeat_at=now)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def heartbeat(self, job_id: uuid.UUID, now: datetime) -> None:
        self.session.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(heartbeat_at=now))

    def finish(
        self,
        job_id: uuid.UUID,
        status: str,
        now: datetime,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Close a job that is still open (queued or running); False if it was already closed."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(["queued", "running"]))
            .values(
                status=status,
                stage="done" if status == "succeeded" else status,
                progress=1.0 if status == "succeeded" else Job.progress,
                finished_at=now,
                error_code=error_code,
                error_message=error_message,
            )
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def set_evidence(self, job_id: uuid.UUID, object_key: str) -> None:
        self.session.execute(update(Job).where(Job.id == job_id).values(evidence_key=object_key))

    def fail_stale(self, heartbeat_before: datetime, now: datetime) -> Sequence[uuid.UUID]:
        """Fail running jobs whose worker stopped beating before `heartbeat_before`; their ids."""
        stale = self.session.scalars(
            select(Job.id).where(Job.status == "running", Job.heartbeat_at < heartbeat_before)
        ).all()
        return [
            job_id
            for job_id in stale
            if self.finish(job_id, "failed", now, "worker_lost", "the worker stopped sending heartbeats")
        ]


class JobEventRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def append(self, job_id: uuid.UUID, type: str, payload: dict[str, Any] | None = None) -> JobEvent:
        last = self.session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
        event = JobEvent(job_id=job_id, seq=(last or 0) + 1, type=type, payload=payload or {})
        self.session.add(event)
        self.session.flush()
        return event

    def list(self, job_id: uuid.UUID) -> Sequence[JobEvent]:
        return self.session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()


class MetricRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add_many(self, metrics: Iterable[Metric]) -> None:
        self.session.add_all(list(metrics))
        self.session.flush()

    def list_for_job(self, job_id: uuid.UUID) -> Sequence[Metric]:
        return self.session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.id)).all()


class AdapterRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, adapter: Adapter) -> Adapter:
        self.session.add(adapter)
        self.session.flush()
        return adapter

    def get(self, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> Adapter | None:
        return self.session.scalar(select(Adapter).where(Adapter.id == adapter_id, Adapter.tenant_id == tenant_id))

    def get_for_job(self, job_id: uuid.UUID) -> Adapter | None:
        return self.session.scalar(select(Adapter).where(Adapter.job_id == job_id))


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, audit: Audit) -> Audit:
        self.session.add(audit)
        self.session.flush()
        return audit

    def create_with_job(self, tenant_id: uuid.UUID, spec: AuditJobSpec) -> Audit:
        """A queued audit job with its validated `spec`, and its audit row."""
        job = JobRepository(self.session).add(
            Job(
                tenant_id=tenant_id,
                kind="audit",
                status="queued",
                stage="queued",
                progress=0.0,
                spec=spec.model_dump(mode="json"),
            )
        )
        JobEventRepository(self.session).append(job.id, "queued", {"attacks": [a.name for a in spec.attacks]})
        return self.add(
            Audit(
                tenant_id=tenant_id,
                job_id=job.id,
                adapter_id=spec.adapter_id,
                thresholds=spec.thresholds.model_dump(mode="json"),
            )
        )

    def get(self, tenant_id: uuid.UUID, audit_id: uuid.UUID) -> Audit | None:
        return self.session.scalar(select(Audit).where(Audit.id == audit_id, Audit.tenant_id == tenant_id))

    def get_for_job(self, job_id: uuid.UUID) -> Audit | None:
        return self.session.scalar(select(Audit).where(Audit.job_id == job_id))

    def get_by_id(self, audit_id: uuid.UUID) -> Audit | None:
        return self.session.get(Audit, audit_id)

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
    ) -> None:
        """Write an audit's per-attack results, verdict and signed report keys (one transaction with the job)."""
        self.session.add_all(list(results))
        self.session.execute(
            update(Audit)
            .where(Audit.id == audit_id)
            .values(
                verdict=verdict,
                report_key=report_key,
                report_html_key=report_html_key,
                signature=signature,
                signing_key_id=signing_key_id,
                skipped=skipped,
            )
        )
        self.session.flush()

    def results(self, audit_id: uuid.UUID) -> Sequence[AuditResult]:
        return self.session.scalars(
            select(AuditResult).where(AuditResult.audit_id == audit_id).order_by(AuditResult.id)
        ).all()
