"""Per-tenant limits checked before a write: active jobs, stored bytes and a job's estimated cost.

Each check that counts rows first locks the tenant (`TenantRepository.lock`), so that two concurrent requests
cannot both see room for one more: the lock is held until the request's unit of work commits the row it allowed.
Every refusal names the limit, the current usage and what the request asked for, and is raised before anything is
written (the unit of work then rolls back what little there is).
"""

import uuid

from sqlalchemy.orm import Session

from api.errors import CostExceeded, QuotaExceeded, TooManyRequests
from lethe.costs import CostEstimate
from lethe.settings import Settings
from models.repositories import JobRepository, TenantRepository


def check_room_for_job(session: Session, settings: Settings, tenant_id: uuid.UUID) -> None:
    """Lock the tenant and refuse a new job when its active jobs are at the cap (429) or its stored bytes are at
    the limit (403): the job's adapter and evidence would add to them."""
    TenantRepository(session).lock(tenant_id)
    _refuse_at_active_jobs_cap(session, settings, tenant_id)
    _refuse_over_stored_bytes(session, settings, tenant_id, 0)


def check_stored_bytes(session: Session, settings: Settings, tenant_id: uuid.UUID, adding_bytes: int) -> None:
    """Lock the tenant and refuse (403 quota_exceeded) a write of `adding_bytes` that would take the tenant's
    stored bytes over the limit."""
    TenantRepository(session).lock(tenant_id)
    _refuse_over_stored_bytes(session, settings, tenant_id, adding_bytes)


def _refuse_at_active_jobs_cap(session: Session, settings: Settings, tenant_id: uuid.UUID) -> None:
    """429 when the tenant's queued and running jobs are at the cap (the caller holds the tenant's lock)."""
    active = JobRepository(session).count_active(tenant_id)
    limit = settings.max_active_jobs_per_tenant
    if active >= limit:
        raise TooManyRequests(
            "too_many_active_jobs",
            f"the tenant has {active} queued or running jobs (forget and audit jobs together), the limit "
            f"(LETHE_MAX_ACTIVE_JOBS_PER_TENANT) is {limit}: wait for one to finish or cancel one",
            settings.active_jobs_retry_after_s,
        )


def _refuse_over_stored_bytes(session: Session, settings: Settings, tenant_id: uuid.UUID, adding_bytes: int) -> None:
    """403 when `adding_bytes` would take the tenant's stored bytes over the limit (the caller holds the tenant's
    lock); a job, whose objects are written later by the worker, adds 0 and is refused only when the tenant is
    already at the limit."""
    stored = TenantRepository(session).stored_bytes(tenant_id)
    limit = settings.max_stored_bytes_per_tenant
    if stored + adding_bytes > limit or stored >= limit:
        asked = f"this upload of {adding_bytes} bytes" if adding_bytes else "a new job (its adapter and evidence)"
        raise QuotaExceeded(
            f"the tenant stores {stored} bytes (datasets, adapters, evidence and reports); {asked} would go over "
            f"the limit (LETHE_MAX_STORED_BYTES_PER_TENANT) of {limit} bytes"
        )


def check_cost(settings: Settings, job: str, estimate: CostEstimate) -> None:
    """Refuse (422 cost_exceeded) a `job` ("forget request", "audit") whose estimated cost is over the cap."""
    if estimate.total > settings.max_job_cost:
        raise CostExceeded(
            f"the {job}'s estimated cost of {estimate.describe()} is over the limit (LETHE_MAX_JOB_COST) of "
            f"{settings.max_job_cost:,.0f} example-passes: use fewer rows, epochs or steps"
        )
