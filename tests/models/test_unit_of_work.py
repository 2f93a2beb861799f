"""The unit of work: jobs reach the broker only once committed, a refused job is failed, a rollback undoes."""

import uuid

import pytest

from lethe.settings import Settings
from models.db import BrokerUnavailable, session_scope, unit_of_work
from models.repositories import JobEventRepository, JobRepository, TenantRepository
from tests.conftest import forget_job_spec

SPEC = forget_job_spec(uuid.uuid4())


def _status(settings: Settings, job_id: uuid.UUID) -> tuple[str | None, str | None, list[str]]:
    """(status, error code, event types) of a job as another session sees it; status None if it is not there."""
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        events = [event.type for event in JobEventRepository(session).list(job_id)]
        return (job.status, job.error_code, events) if job else (None, None, events)


def test_a_job_is_sent_after_its_commit(stack_settings: Settings) -> None:
    seen: list[tuple[str | None, str | None, list[str]]] = []
    with unit_of_work(stack_settings.database_url) as work:
        tenant = TenantRepository(work.session).get_or_create("unit-of-work-tests")
        job = JobRepository(work.session).create_queued(tenant.id, SPEC)
        work.enqueue_after_commit(job.id, lambda: seen.append(_status(stack_settings, job.id)))
        assert seen == []
    assert seen == [("queued", None, ["queued"])]


def test_a_job_the_broker_refuses_is_failed_and_reported(stack_settings: Settings) -> None:
    def refuse() -> None:
        raise ConnectionError("connection refused")

    with (
        pytest.raises(BrokerUnavailable, match="connection refused") as raised,
        unit_of_work(stack_settings.database_url) as work,
    ):
        tenant = TenantRepository(work.session).get_or_create("unit-of-work-tests")
        job = JobRepository(work.session).create_queued(tenant.id, SPEC)
        work.enqueue_after_commit(job.id, refuse)
    assert raised.value.job_ids == [job.id]
    assert _status(stack_settings, job.id) == ("failed", "broker_unavailable", ["queued", "failed"])


def test_a_rollback_undoes_and_sends_nothing(stack_settings: Settings) -> None:
    sent: list[uuid.UUID] = []
    undone: list[str] = []
    with pytest.raises(RuntimeError, match="route failed"), unit_of_work(stack_settings.database_url) as work:
        tenant = TenantRepository(work.session).get_or_create("unit-of-work-tests")
        job = JobRepository(work.session).create_queued(tenant.id, SPEC)
        work.undo_on_rollback(lambda: undone.append("first"))
        work.undo_on_rollback(lambda: undone.append("second"))
        work.enqueue_after_commit(job.id, lambda: sent.append(job.id))
        raise RuntimeError("route failed")
    assert sent == [] and undone == ["second", "first"]
    assert _status(stack_settings, job.id) == (None, None, [])
