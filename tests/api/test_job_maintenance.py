"""The API's periodic pass over jobs (api/app.py::maintain_jobs) on the real catalogue and Redis: a submitted job is
marked sent, a lost worker's job is re-queued and sent, a queued job whose message was lost is sent again; the pass
runs beside the requests, not in their event loop."""

import asyncio
import logging
import time
import uuid
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import _maintain_jobs_forever, maintain_jobs
from lethe.queue import QUEUE, make_celery
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobEventRepository, JobRepository, TenantRepository
from models.tables import Job, utcnow
from storage import open_store
from storage.keys import checkpoint_keys
from tests.api.conftest import CHOICE_ROWS, upload


def _messages_for(settings: Settings, job_id: uuid.UUID) -> int:
    """How many messages wait in the broker's queue for this job (its id is in each message's headers)."""
    raw = redis.Redis.from_url(settings.broker_url).lrange(QUEUE, 0, -1)
    return sum(str(job_id).encode() in message for message in raw)


def _job(settings: Settings, job_id: uuid.UUID) -> Job:
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None
        return job


def _add_job(settings: Settings, **columns: object) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        tenant = TenantRepository(session).get_or_create("maintenance-tests")
        return JobRepository(session).add(Job(tenant_id=tenant.id, spec={}, **{"kind": "forget", **columns})).id


def _close(settings: Settings, *job_ids: uuid.UUID) -> None:
    with session_scope(settings.database_url) as session:
        for job_id in job_ids:
            JobRepository(session).finish(job_id, "cancelled", utcnow())


def test_a_submitted_job_is_marked_sent_with_its_commit(client: TestClient, stack_settings: Settings) -> None:
    forget_id = upload(client, CHOICE_ROWS).json()["id"]
    body = {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": "random_label"}}
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["job_id"])
    job = _job(stack_settings, job_id)
    assert job.status == "queued" and job.sent_at is not None
    assert _messages_for(stack_settings, job_id) == 1
    _close(stack_settings, job_id)


def test_a_pass_requeues_a_lost_job_and_sends_it(stack_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    long_ago = utcnow() - timedelta(hours=1)
    lost = _add_job(stack_settings, status="running", attempts=1, heartbeat_at=long_ago, progress_at=long_ago)
    with caplog.at_level(logging.WARNING, logger="lethe.api"):
        maintain_jobs(stack_settings, make_celery(stack_settings), open_store(stack_settings))
    job = _job(stack_settings, lost)
    assert job.status == "queued" and job.attempts == 1 and job.sent_at is not None
    assert _messages_for(stack_settings, lost) == 1
    with session_scope(stack_settings.database_url) as session:
        assert [e.type for e in JobEventRepository(session).list(lost)] == ["requeued"]
    assert f"job {lost} re-queued" in caplog.text and f"job {lost} sent" in caplog.text
    _close(stack_settings, lost)


def test_a_pass_sends_again_only_jobs_not_claimed_in_time(
    stack_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A message lost by the broker (flushed, restarted): the job is still queued in the catalogue, so it is sent
    again once the redelivery timeout has passed, and not before."""
    settings = stack_settings.model_copy(update={"redeliver_after_s": 60})
    # Two minutes: due for this pass, not for the default timeout of the app the API tests keep running.
    lost_message = _add_job(settings, status="queued", sent_at=utcnow() - timedelta(minutes=2))
    recent = _add_job(settings, status="queued", sent_at=utcnow())
    with caplog.at_level(logging.WARNING, logger="lethe.api"):
        maintain_jobs(settings, make_celery(settings), open_store(settings))
    assert _messages_for(settings, lost_message) == 1 and _messages_for(settings, recent) == 0
    assert _job(settings, lost_message).sent_at > utcnow() - timedelta(minutes=1)  # type: ignore[operator]
    assert f"job {lost_message} sent again" in caplog.text
    _close(settings, lost_message, recent)


def test_a_job_of_a_kind_no_worker_runs_does_not_stop_the_relay(stack_settings: Settings) -> None:
    stray = _add_job(stack_settings, status="queued", kind=f"t-{uuid.uuid4().hex[:8]}")
    job = _add_job(stack_settings, status="queued")
    maintain_jobs(stack_settings, make_celery(stack_settings), open_store(stack_settings))
    assert _messages_for(stack_settings, job) == 1
    assert _messages_for(stack_settings, stray) == 0
    _close(stack_settings, stray, job)


def test_the_pass_does_not_block_the_event_loop(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a pass waits on a slow catalogue or broker, the loop that serves requests keeps its turns."""
    pass_started: list[float] = []

    def slow_pass(settings: Settings, queue: object, store: object) -> None:
        pass_started.append(time.monotonic())
        time.sleep(3)

    async def lag_of_the_loop() -> float:
        """How long after the pass started the loop ran something else (a request's turn)."""
        maintenance = asyncio.create_task(
            _maintain_jobs_forever(stack_settings, make_celery(stack_settings), open_store(stack_settings))
        )
        while not pass_started:
            await asyncio.sleep(0.01)
        lag = time.monotonic() - pass_started[0]
        maintenance.cancel()
        return lag

    monkeypatch.setattr("api.app.maintain_jobs", slow_pass)
    assert asyncio.run(lag_of_the_loop()) < 1.0


def _stored_checkpoint(settings: Settings, job_id: uuid.UUID) -> list[str]:
    """Put a checkpoint's objects (their content does not matter here) for the job; their keys."""
    job = _job(settings, job_id)
    keys = checkpoint_keys(job.tenant_id, job.id)
    store = open_store(settings)
    for key in keys:
        store.put(key, b"checkpoint")
    return keys


def test_a_job_the_reaper_fails_loses_its_checkpoint_and_a_requeued_one_keeps_it(stack_settings: Settings) -> None:
    """No worker will resume a job that failed for good (worker_lost on its last attempt): its checkpoint goes. One
    queued again keeps it, for the next attempt to resume from."""
    long_ago = utcnow() - timedelta(hours=1)
    running = {"status": "running", "heartbeat_at": long_ago, "progress_at": long_ago}
    last_attempt = _add_job(stack_settings, attempts=stack_settings.max_attempts, **running)
    first_attempt = _add_job(stack_settings, attempts=1, **running)
    failed_keys = _stored_checkpoint(stack_settings, last_attempt)
    requeued_keys = _stored_checkpoint(stack_settings, first_attempt)
    store = open_store(stack_settings)
    maintain_jobs(stack_settings, make_celery(stack_settings), store)
    assert _job(stack_settings, last_attempt).status == "failed"
    assert not any(store.exists(key) for key in failed_keys)
    assert _job(stack_settings, first_attempt).status == "queued"
    assert all(store.exists(key) for key in requeued_keys)
    _close(stack_settings, first_attempt)


def test_cancelling_a_queued_job_deletes_its_checkpoint(client: TestClient, stack_settings: Settings) -> None:
    forget_id = upload(client, CHOICE_ROWS).json()["id"]
    body = {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": "random_label"}}
    job_id = uuid.UUID(client.post("/v1/forget-requests", json=body).json()["job_id"])
    keys = _stored_checkpoint(stack_settings, job_id)  # as a job re-queued after its worker died has
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    store = open_store(stack_settings)
    assert not any(store.exists(key) for key in keys)
