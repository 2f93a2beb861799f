"""What every pipeline shares (worker/pipelines/jobs.py), on the real catalogue: one claim per delivery, the claim's
attempt on every write, the time limit."""

import threading
import time
import uuid

import torch

from lethe.settings import Settings
from models.db import session_scope
from models.repositories import Claim, JobEventRepository, JobRepository, TenantRepository
from models.tables import Job, utcnow
from worker.engine.lm.placement import worker_placement
from worker.pipelines.jobs import HARD_LIMIT_EXIT_STATUS, ProgressReporter, TimeLimit, run_job, run_next_job


def _queued_job(settings: Settings, kind: str) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        tenant = TenantRepository(session).get_or_create(f"worker-jobs-{kind}")
        return JobRepository(session).add(Job(tenant_id=tenant.id, kind=kind, status="queued", spec={})).id


def _job(settings: Settings, job_id: uuid.UUID) -> Job:
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None
        return job


def _kind() -> str:
    # A kind of the test's own: run_next_job claims only this test's jobs in the shared catalogue.
    return f"t-{uuid.uuid4().hex[:10]}"


def test_two_deliveries_of_one_job_run_it_once(stack_settings: Settings) -> None:
    kind = _kind()
    job_id = _queued_job(stack_settings, kind)
    ran: list[uuid.UUID] = []
    first = run_next_job(stack_settings, kind, ran.append, woken_by=job_id)
    second = run_next_job(stack_settings, kind, ran.append, woken_by=job_id)
    assert (first, second) == ("succeeded", "skipped")
    assert ran == [job_id]
    assert _job(stack_settings, job_id).attempts == 1
    with session_scope(stack_settings.database_url) as session:
        running = [e.payload for e in JobEventRepository(session).list(job_id) if e.type == "running"]
    assert [payload["attempt"] for payload in running] == [1]


def test_a_claimed_job_records_its_device_and_precision(stack_settings: Settings, monkeypatch) -> None:
    """As the worker places its base LM (`worker_placement`), recorded at the claim, before the job's body runs."""
    monkeypatch.setenv("LETHE_PRECISION", "bf16")
    job_id = _queued_job(stack_settings, _kind())
    seen: list[tuple[str | None, str | None]] = []

    def body() -> None:
        job = _job(stack_settings, job_id)
        seen.append((job.device, job.precision))

    assert run_job(stack_settings, job_id, body) == "succeeded"
    job = _job(stack_settings, job_id)
    assert seen == [(job.device, job.precision)]
    placement = worker_placement()
    assert (job.device, job.precision) == (placement.device_label(), placement.precision_label())
    on_gpu = torch.cuda.is_available()
    assert job.device is not None and job.device.startswith("cuda:0 (" if on_gpu else "cpu (")
    assert job.precision == ("bf16-autocast, bf16 weights" if on_gpu else "bf16-autocast, bf16 linear weights")
    with session_scope(stack_settings.database_url) as session:
        running = [e.payload for e in JobEventRepository(session).list(job_id) if e.type == "running"]
    assert [(p["device"], p["precision"]) for p in running] == [(job.device, job.precision)]


def test_a_worker_whose_job_was_requeued_and_claimed_again_writes_nothing(stack_settings: Settings) -> None:
    """While attempt 1 runs, the reaper re-queues its job and another worker claims attempt 2; attempt 1's next
    progress report is refused, it stops, and its failure is not written over attempt 2."""
    job_id = _queued_job(stack_settings, _kind())

    def body() -> None:
        report = ProgressReporter(stack_settings, job_id, min_interval_s=0)
        report("forgetting", 0.1)
        with session_scope(stack_settings.database_url) as session:
            jobs = JobRepository(session)
            job = jobs.get_any_tenant(job_id)
            assert job is not None and jobs.requeue(job, utcnow(), "worker_lost: test")
            assert jobs.claim(job_id, utcnow()) == Claim(job_id, 2)
        report("forgetting", 0.5)

    assert run_job(stack_settings, job_id, body) == "closed"
    job = _job(stack_settings, job_id)
    assert (job.status, job.attempts, job.error_code, job.progress) == ("running", 2, None, 0.0)
    with session_scope(stack_settings.database_url) as session:
        JobRepository(session).finish(job_id, "cancelled", utcnow())


def test_a_job_past_its_time_limit_fails_with_time_limit(stack_settings: Settings) -> None:
    job_id = _queued_job(stack_settings, _kind())
    settings = stack_settings.model_copy(update={"job_time_limit_s": 1.0})
    started = time.monotonic()
    assert run_job(settings, job_id, lambda: time.sleep(30)) == "failed"
    assert time.monotonic() - started < 10
    job = _job(settings, job_id)
    assert (job.status, job.error_code) == ("failed", "time_limit")
    assert "time limit of 1 s" in (job.error_message or "")


def test_a_job_that_ignores_its_time_limit_is_failed_and_its_worker_ended(stack_settings: Settings) -> None:
    """The hard limit: off the main thread there is no soft limit to raise, as for a job stuck in native code; the
    timer fails the job and ends the process (here: records the exit status instead)."""
    job_id = _queued_job(stack_settings, _kind())
    with session_scope(stack_settings.database_url) as session:
        claim = JobRepository(session).claim(job_id, utcnow())
    assert claim is not None
    exits: list[int] = []

    def stuck_job() -> None:
        with TimeLimit(stack_settings, claim, limit_s=0.5, grace_s=0.5, exit=exits.append):
            time.sleep(3)

    thread = threading.Thread(target=stuck_job)
    thread.start()
    thread.join()
    assert exits == [HARD_LIMIT_EXIT_STATUS]
    job = _job(stack_settings, job_id)
    assert (job.status, job.error_code) == ("failed", "time_limit")


def test_a_hung_job_is_interrupted_once_the_reaper_failed_it(stack_settings: Settings) -> None:
    """The job hangs without reporting; the reaper fails it as stalled; its worker is not left hanging with it: the
    job's heartbeat finds its claim gone and interrupts the job, and the worker is free for the next one."""
    settings = stack_settings.model_copy(update={"heartbeat_interval_s": 0.2})
    job_id = _queued_job(settings, _kind())

    def reaper() -> None:
        time.sleep(1)
        with session_scope(settings.database_url) as session:
            jobs = JobRepository(session)
            job = jobs.get_any_tenant(job_id)
            assert job is not None and jobs.fail_stalled(job, utcnow(), "stalled (test)", utcnow())

    thread = threading.Thread(target=reaper)
    thread.start()
    started = time.monotonic()
    assert run_job(settings, job_id, lambda: time.sleep(30)) == "closed"
    thread.join()
    assert time.monotonic() - started < 10
    job = _job(settings, job_id)
    assert (job.status, job.error_code) == ("failed", "stalled")


def test_a_job_that_succeeds_is_not_interrupted_by_its_last_heartbeat(stack_settings: Settings) -> None:
    """The body closes the job itself (succeeded) and the heartbeat beats once more before it stops: no interruption."""
    settings = stack_settings.model_copy(update={"heartbeat_interval_s": 0.05})
    job_id = _queued_job(settings, _kind())

    def succeed_then_linger() -> None:
        with session_scope(settings.database_url) as session:
            assert JobRepository(session).finish(job_id, "succeeded", utcnow(), attempt=1)
        time.sleep(0.5)  # several beats find the job closed

    assert run_job(settings, job_id, succeed_then_linger) == "succeeded"
