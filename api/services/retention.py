"""Evidence retention: a tenant's `evidence_retention_days`, and the maintenance pass that applies it.

What goes: for each job of the tenant that finished more than N days ago, its evidence objects: the per-example
values (`GET /v1/jobs/{id}/per-example`), the adapter's state before forgetting, and any checkpoint left. Each job's
evidence goes in a deletion of its own, reason `retention`, with a signed receipt listing the objects and their
hashes and an `evidence` tombstone; the job stops pointing at them (its stored bytes drop accordingly).

What stays: the job, its metrics and curves (aggregates with their intervals), its adapter, its audits and their
signed reports (the deliverable, which hold aggregates too), and the datasets (the tenant's uploads; DELETE them).

Afterwards the per-example route answers 410 naming the deletion, the job shows `evidence_deleted_at`, and a new
audit of its adapter is refused (422), since an audit restores and compares against the pre-forgetting state. A
job whose adapter is being audited (a queued or running audit reads that state) is left for a later pass.
"""

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from api.errors import NotFound
from api.schemas import RetentionOut
from api.services.deletions import OPEN_STATUSES, Cascade, bury
from lethe.settings import Settings
from models.db import UnitOfWork, session_scope, unit_of_work
from models.repositories import AdapterRepository, AuditRepository, JobRepository, TenantRepository
from storage import ObjectStore
from storage.keys import before_forgetting_key, checkpoint_keys, per_example_key

log = logging.getLogger("lethe.api")


def set_retention(session: Session, tenant_name: str, days: int | None) -> RetentionOut:
    """Set how many days the tenant's evidence is kept (None: forever); NotFound for an unknown tenant."""
    tenant = TenantRepository(session).get_by_name(tenant_name)
    if tenant is None:
        raise NotFound(f"tenant {tenant_name!r} not found")
    tenant.evidence_retention_days = days
    session.flush()
    return RetentionOut(tenant=tenant.name, evidence_retention_days=days)


def apply_retention(settings: Settings, store: ObjectStore, now: datetime, limit: int = 100) -> int:
    """Delete the evidence of jobs that finished longer ago than their tenant keeps it, at most `limit` jobs per
    tenant in one pass, each in a short transaction of its own; how many jobs lost their evidence."""
    with session_scope(settings.database_url) as session:
        tenants = [(t.id, t.evidence_retention_days) for t in TenantRepository(session).with_retention()]
    expired = 0
    for tenant_id, days in tenants:
        assert days is not None
        with session_scope(settings.database_url) as session:
            finished_before = now - timedelta(days=days)
            job_ids = [job.id for job in JobRepository(session).evidence_expired(tenant_id, finished_before, limit)]
        for job_id in job_ids:
            with unit_of_work(settings.database_url) as work:
                if _expire_evidence(work, settings, store, tenant_id, job_id):
                    expired += 1
                    log.info("job %s: evidence deleted (tenant keeps it %d days)", job_id, days)
    return expired


def _expire_evidence(
    work: UnitOfWork, settings: Settings, store: ObjectStore, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> bool:
    """Delete one job's evidence with a receipt, unless it is gone already or an audit of its adapter is open."""
    session = work.session
    TenantRepository(session).lock(tenant_id)
    job = JobRepository(session).get(tenant_id, job_id)
    if job is None or job.evidence_key is None:
        return False  # deleted, or its evidence already gone, since the pass listed it
    adapter = AdapterRepository(session).get_for_job(job.id)
    if adapter is not None:
        for audit in AuditRepository(session).list_for_adapter(adapter.id):
            audit_job = JobRepository(session).get(tenant_id, audit.job_id)
            if audit_job is not None and audit_job.status in OPEN_STATUSES:
                return False
    cascade = Cascade(session, store, tenant_id, resources=[("evidence", job.id)])
    evidence = [per_example_key(tenant_id, job.id), before_forgetting_key(tenant_id, job.id)]
    for key in [*evidence, *checkpoint_keys(tenant_id, job.id)]:
        cascade.take_object(key)
    JobRepository(session).drop_evidence(job.id)
    bury(work, settings, cascade, "evidence", job.id, "retention")
    return True
