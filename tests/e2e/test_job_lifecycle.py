"""Jobs that do not end normally: cancelled by the user, orphaned by a worker that died (re-queued, and resumed
from its checkpoint), their message lost by the broker, past their time limit."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import redis
import torch
from safetensors.torch import load as load_safetensors
from sqlalchemy import update

from lethe.queue import enqueue_forget_job, make_celery
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AdapterRepository, JobEventRepository, JobRepository, MetricRepository
from models.tables import Job
from storage import ObjectNotFoundError, open_store
from storage.keys import before_forgetting_key, checkpoint_keys, checkpoint_manifest_key, per_example_key
from tests.conftest import REDIS_DB
from tests.e2e.conftest import BOOTSTRAP_KEY, ROOT, own_redis_db, start_lethe, upload_rows, wait_for_job
from tests.tiny_lm import synthetic_choice_rows

# Long enough to be caught while it runs: many epochs, no early stop.
SLOW_METHOD = {"name": "gradient_ascent", "params": {"epochs": 100, "batch_size": 2, "stop_at_target": False}}
# Trains long enough to be killed while it runs, short enough to run again to the end.
MEDIUM_METHOD = {"name": "gradient_ascent", "params": {"epochs": 8, "batch_size": 2, "stop_at_target": False}}


def _submit_slow_job(client: httpx.Client, method: dict = SLOW_METHOD) -> str:
    forget_id = upload_rows(client, synthetic_choice_rows(64, seed=3), "slow")
    response = client.post(
        "/v1/forget-requests",
        json={"base_model": "tiny-e2e", "forget_dataset": forget_id, "method": method, "probe": False},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _wait_for_stage(client: httpx.Client, job_id: str, stage: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["stage"] == stage:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached stage {stage}")


def _job_row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(uuid.UUID(job_id))
        assert job is not None
        session.expunge(job)
        return job


def _assert_nothing_stored(settings: Settings, job_id: str) -> None:
    """No adapter row, no metric rows, and none of the job's own objects (evidence, checkpoint) in the S3 server."""
    job = _job_row(settings, job_id)
    with session_scope(settings.database_url) as session:
        assert AdapterRepository(session).get_for_job(job.id) is None
        assert list(MetricRepository(session).list_for_job(job.id)) == []
    store = open_store(settings)
    keys = [
        per_example_key(job.tenant_id, job.id),
        before_forgetting_key(job.tenant_id, job.id),
        *checkpoint_keys(job.tenant_id, job.id),
    ]
    assert [key for key in keys if store.exists(key)] == []
    assert job.evidence_key is None


def test_cancel_a_running_job(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    """The worker stops the cancelled job within seconds (its log says so, its checkpoint is not written again, it
    takes the next job long before the cancelled one could have ended), appends nothing after the cancel, and
    stores nothing."""
    # A checkpoint every 4 steps: a worker still training after the cancel would keep rewriting it in the store.
    env = {**own_redis_db(stack_env, REDIS_DB), "LETHE_CHECKPOINT_EVERY_STEPS": "4"}
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    worker = services[1]
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        job_id = _submit_slow_job(client)
        _wait_for_stage(client, job_id, "forgetting")
        cancelled_at = time.monotonic()
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
        # The worker notices at its next progress report (or heartbeat) and stops: its own log line, within
        # seconds, where the 100 epochs it was asked for take minutes.
        stopped = f"job {job_id} stopped: job_closed"
        while time.monotonic() < cancelled_at + 30 and stopped not in worker.log_path.read_text():
            time.sleep(0.2)
        assert stopped in worker.log_path.read_text(), worker.log()
        frozen = client.get(f"/v1/jobs/{job_id}").json()
        next_job_id = _submit_quick_job(client)
        # Two heartbeats and well over 4 training steps later: nothing of the cancelled job has moved.
        time.sleep(3)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["adapter_id"] is None
        assert job["stage"] == "cancelled" and job["progress"] == frozen["progress"] < 1.0
        _assert_nothing_stored(stack_settings, job_id)
        # The one worker (solo pool) is free: it runs the next job to the end.
        next_job = wait_for_job(client, next_job_id, services, timeout_s=120)
        assert next_job["status"] == "succeeded"
        assert next_job["started_at"] is not None
    with session_scope(stack_settings.database_url) as session:
        types = [e.type for e in JobEventRepository(session).list(uuid.UUID(job_id))]
    assert types[0] == "queued" and types.count("running") == 1
    # The cancel is the job's last event: no stage, failure or success from the worker after it.
    assert types.index("cancelled") == len(types) - 1, types
    _assert_nothing_stored(stack_settings, job_id)


def test_cancel_a_queued_job(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    """A job cancelled before any worker claimed it is never run: no attempt, no start, nothing stored, while the
    worker that then starts runs the job queued after it."""
    env = own_redis_db(stack_env, REDIS_DB)
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    api, worker = services
    worker.stop()  # nobody claims the job before the cancel
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        job_id = _submit_quick_job(client)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert (cancelled.json()["status"], cancelled.json()["stage"]) == ("cancelled", "cancelled")
        next_job_id = _submit_quick_job(client)
        # The new worker is woken by both messages (the cancelled job's too) and runs only the queued one.
        new_worker = start_service(["worker"], env)
        next_job = wait_for_job(client, next_job_id, [api, new_worker], timeout_s=180)
        assert next_job["status"] == "succeeded", next_job
        # Long enough for the relay (every 2 s here) to send anything it still thought queued.
        time.sleep(5)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["stage"] == "cancelled" and job["progress"] == 0.0
    assert job["started_at"] is None and job["adapter_id"] is None
    row = _job_row(stack_settings, job_id)
    assert row.attempts == 0
    with session_scope(stack_settings.database_url) as session:
        assert [e.type for e in JobEventRepository(session).list(row.id)] == ["queued", "cancelled"]
    assert f"job {job_id}, attempt" not in new_worker.log_path.read_text()
    _assert_nothing_stored(stack_settings, job_id)


def _submit_quick_job(client: httpx.Client) -> str:
    forget_id = upload_rows(client, synthetic_choice_rows(8, seed=4), "quick")
    method = {"name": "random_label", "params": {"epochs": 1}}
    response = client.post(
        "/v1/forget-requests",
        json={"base_model": "tiny-e2e", "forget_dataset": forget_id, "method": method, "probe": False},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _attempts_and_events(settings: Settings, job_id: str) -> tuple[int, list[tuple[str, dict]]]:
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(uuid.UUID(job_id))
        assert job is not None
        return job.attempts, [(e.type, e.payload) for e in JobEventRepository(session).list(job.id)]


def test_a_killed_workers_job_is_requeued_and_a_new_worker_finishes_it(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    env = {**own_redis_db(stack_env, REDIS_DB), "LETHE_HEARTBEAT_TIMEOUT_S": "4", "LETHE_REAPER_INTERVAL_S": "1"}
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    api, worker = services
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        job_id = _submit_slow_job(client, MEDIUM_METHOD)
        _wait_for_stage(client, job_id, "forgetting")
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        # No heartbeat for the timeout: the reaper puts it back in the queue (and the relay sends it).
        _wait_for_stage(client, job_id, "queued", timeout_s=60)
        new_worker = start_service(["worker"], env)
        job = wait_for_job(client, job_id, [api, new_worker], timeout_s=600)
    assert job["status"] == "succeeded", job
    attempts, events = _attempts_and_events(stack_settings, job_id)
    assert attempts == 2
    assert [payload["attempt"] for kind, payload in events if kind == "running"] == [1, 2]
    [requeued] = [payload for kind, payload in events if kind == "requeued"]
    assert requeued["attempt"] == 1 and "worker_lost" in requeued["reason"]
    assert f"job {job_id} re-queued" in api.log_path.read_text()


def test_a_job_whose_message_was_lost_is_sent_again_and_runs(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    """The broker loses the message (its database flushed, as a restart without persistence would): the job is still
    queued in the catalogue, and the relay sends it again once the redelivery timeout has passed."""
    env = {**own_redis_db(stack_env, REDIS_DB), "LETHE_REDELIVER_AFTER_S": "3", "LETHE_REAPER_INTERVAL_S": "1"}
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    api, worker = services
    worker.stop()  # no worker takes the message before the broker loses it
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        job_id = _submit_quick_job(client)
        redis.Redis.from_url(env["LETHE_BROKER_URL"]).flushdb()
        new_worker = start_service(["worker"], env)
        job = wait_for_job(client, job_id, [api, new_worker], timeout_s=300)
    assert job["status"] == "succeeded", job
    assert f"job {job_id} sent again" in api.log_path.read_text()
    assert _attempts_and_events(stack_settings, job_id)[0] == 1


def test_a_job_past_its_time_limit_fails_and_the_worker_carries_on(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    """The soft limit in a real Celery worker (solo pool: the task runs on the main thread, where SIGALRM lands)."""
    env = {**own_redis_db(stack_env, REDIS_DB), "LETHE_JOB_TIME_LIMIT_S": "15"}
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        job = wait_for_job(client, _submit_slow_job(client), services, timeout_s=120)
        assert job["status"] == "failed" and job["error"]["code"] == "time_limit", job
        assert wait_for_job(client, _submit_quick_job(client), services, timeout_s=120)["status"] == "succeeded"


def test_one_tenants_backlog_does_not_hold_back_anothers_job(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    """Tenant a submits ten jobs, then tenant b one, all before a worker runs: b's job does not wait for a's ten."""
    env = own_redis_db(stack_env, REDIS_DB)
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    api, worker = services
    worker.stop()
    other_key = subprocess.run(
        [sys.executable, "-m", "cli.main", "api-keys", "create", "--tenant", f"fair-{uuid.uuid4().hex[:8]}"],
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with (
        httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as tenant_a,
        httpx.Client(base_url=base_url, headers={"X-API-Key": other_key}, timeout=30) as tenant_b,
    ):
        a_jobs = [_submit_quick_job(tenant_a) for _ in range(10)]
        b_job = _submit_quick_job(tenant_b)
        new_worker = start_service(["worker"], env)
        for job_id in a_jobs:
            assert wait_for_job(tenant_a, job_id, [api, new_worker], timeout_s=300)["status"] == "succeeded"
        assert wait_for_job(tenant_b, b_job, [api, new_worker], timeout_s=60)["status"] == "succeeded"
        a_started = [_started_at(tenant_a, job_id) for job_id in a_jobs]
        b_started = _started_at(tenant_b, b_job)
    # One worker, one job at a time: b's job ran before the second of a's (a's first may have gone first).
    assert sum(started < b_started for started in a_started) <= 1, (b_started, sorted(a_started))


def _started_at(client: httpx.Client, job_id: str) -> datetime:
    return datetime.fromisoformat(client.get(f"/v1/jobs/{job_id}").json()["started_at"])


def _adapter_tensors(client: httpx.Client, adapter_id: str) -> dict[str, torch.Tensor]:
    archive = client.get(f"/v1/adapters/{adapter_id}/download")
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("adapter_model.safetensors"))
        handle = tar.extractfile(member)
        assert handle is not None
        return load_safetensors(handle.read())


def test_a_job_whose_worker_was_killed_resumes_from_its_checkpoint(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    # No reaper within the test: the job is queued again by hand, as the reaper would.
    env = {**own_redis_db(stack_env, 15), "LETHE_CHECKPOINT_EVERY_STEPS": "4", "LETHE_HEARTBEAT_TIMEOUT_S": "600"}
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    api, worker = services
    store = open_store(stack_settings)
    # 24 forget-train rows in batches of 2: 12 steps an epoch, 240 in all.
    method = {"name": "gradient_ascent", "params": {"epochs": 20, "batch_size": 2, "stop_at_target": False}}
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        forget_id = upload_rows(client, synthetic_choice_rows(32, seed=3), "resumed")
        request = {
            "base_model": "tiny-e2e",
            "forget_dataset": forget_id,
            "heldout_fraction": 0.25,
            "method": method,
            "probe": False,
        }

        def submit() -> str:
            response = client.post("/v1/forget-requests", json=request)
            assert response.status_code == 202, response.text
            return str(response.json()["job_id"])

        job_id = submit()
        with session_scope(stack_settings.database_url) as session:
            job = JobRepository(session).get_any_tenant(uuid.UUID(job_id))
            assert job is not None
            manifest_key = checkpoint_manifest_key(job.tenant_id, job.id)

        def forgetting_steps() -> int:
            try:
                manifest = json.loads(store.get(manifest_key))
            except ObjectNotFoundError:
                return 0
            return manifest["steps"] if manifest["snapshot"]["stage"] == "forget" else 0

        deadline = time.monotonic() + 120
        while forgetting_steps() < 8 and time.monotonic() < deadline:
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
            time.sleep(0.05)
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        killed_at = forgetting_steps()
        assert 8 <= killed_at < 240

        with session_scope(stack_settings.database_url) as session:
            session.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(status="queued"))
        broker = stack_settings.model_copy(update={"broker_url": env["LETHE_BROKER_URL"]})
        enqueue_forget_job(make_celery(broker), job_id)
        second_worker = start_service(["worker"], env)
        resumed = wait_for_job(client, job_id, [api, second_worker], timeout_s=180)
        assert resumed["status"] == "succeeded", resumed
        assert not store.exists(manifest_key)

        uninterrupted = wait_for_job(client, submit(), [api, second_worker], timeout_s=180)
        assert uninterrupted["status"] == "succeeded", uninterrupted
        expected = _adapter_tensors(client, uninterrupted["adapter_id"])
        actual = _adapter_tensors(client, resumed["adapter_id"])
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[name], actual[name]) for name in expected)

    with session_scope(stack_settings.database_url) as session:
        events = JobEventRepository(session).list(uuid.UUID(job_id))
    starts = [i for i, event in enumerate(events) if event.type == "running"]
    assert len(starts) == 2
    stages = [e.payload["stage"] for e in events[starts[1] :] if e.type == "stage"]
    # The second run went from loading straight to forgetting: the base LM's evaluation was not redone.
    assert stages[:2] == ["loading", "forgetting"], stages
