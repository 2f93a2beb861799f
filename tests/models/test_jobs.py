"""Job state transitions in the catalogue: claim once, heartbeat, reap the ones whose worker is gone."""

import uuid
from datetime import timedelta

from api.services.jobs import reap_stale_jobs
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobEventRepository, JobRepository, TenantRepository
from models.tables import Job, utcnow


def _queued_job(settings: Settings) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        tenant = TenantRepository(session).get_or_create("jobs-tests")
        job = JobRepository(session).add(Job(tenant_id=tenant.id, kind="forget", status="queued", spec={}))
        return job.id


def test_a_job_is_claimed_once(stack_settings: Settings) -> None:
    job_id = _queued_job(stack_settings)
    with session_scope(stack_settings.database_url) as session:
        assert JobRepository(session).claim(job_id, utcnow())
    with session_scope(stack_settings.database_url) as session:
        assert not JobRepository(session).claim(job_id, utcnow())
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and job.status == "running" and job.attempts == 1


def test_reaper_fails_running_jobs_without_heartbeat(stack_settings: Settings) -> None:
    stale, fresh = _queued_job(stack_settings), _queued_job(stack_settings)
    with session_scope(stack_settings.database_url) as session:
        jobs = JobRepository(session)
        jobs.claim(stale, utcnow() - timedelta(minutes=10))
        jobs.claim(fresh, utcnow())
    with session_scope(stack_settings.database_url) as session:
        reaped = reap_stale_jobs(session, heartbeat_timeout_s=60)
    assert stale in reaped and fresh not in reaped
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(stale)
        assert job is not None and (job.status, job.error_code) == ("failed", "worker_lost")
        assert [e.type for e in JobEventRepository(session).list(stale)] == ["failed"]
        assert JobRepository(session).get_any_tenant(fresh).status == "running"  # type: ignore[union-attr]
        # A closed job cannot be finished again (a late worker cannot overwrite the verdict).
        assert not JobRepository(session).finish(stale, "succeeded", utcnow())
