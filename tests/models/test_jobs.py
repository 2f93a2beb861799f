"""Job state transitions in the catalogue: claims and their attempt tokens, the reaper (re-queue a lost worker's
job up to the attempts cap, fail a stalled one), the relay's queries, and the fair order of claims."""

import threading
import uuid
from datetime import timedelta
from pathlib import Path

from api.services.jobs import reap_stale_jobs
from lethe.settings import Settings
from models.db import session_scope
from models.migrate import upgrade
from models.repositories import Claim, JobEventRepository, JobRepository, TenantRepository
from models.tables import Job, utcnow


def _kind() -> str:
    """A job kind of the test's own: no worker of another test claims its jobs, and it sees no other test's."""
    return f"t-{uuid.uuid4().hex[:10]}"


def _queued_job(database_url: str, kind: str = "forget", tenant: str = "jobs-tests") -> uuid.UUID:
    with session_scope(database_url) as session:
        tenant_id = TenantRepository(session).get_or_create(tenant).id
        return JobRepository(session).add(Job(tenant_id=tenant_id, kind=kind, status="queued", spec={})).id


def _job(database_url: str, job_id: uuid.UUID) -> Job:
    with session_scope(database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None
        return job


def _events(database_url: str, job_id: uuid.UUID) -> list[tuple[str, dict]]:
    with session_scope(database_url) as session:
        return [(e.type, e.payload) for e in JobEventRepository(session).list(job_id)]


def _close(database_url: str, *job_ids: uuid.UUID) -> None:
    """Cancel what a test left open, so no worker of a later test picks it up."""
    with session_scope(database_url) as session:
        for job_id in job_ids:
            JobRepository(session).finish(job_id, "cancelled", utcnow())


def _claim(database_url: str, job_id: uuid.UUID, at_minutes_ago: float = 0) -> Claim:
    with session_scope(database_url) as session:
        claim = JobRepository(session).claim(job_id, utcnow() - timedelta(minutes=at_minutes_ago))
    assert claim is not None
    return claim


def test_a_job_is_claimed_once_and_the_claim_is_its_attempt(stack_settings: Settings) -> None:
    url = stack_settings.database_url
    job_id = _queued_job(url, _kind())
    assert _claim(url, job_id) == Claim(job_id, 1)
    with session_scope(url) as session:
        assert JobRepository(session).claim(job_id, utcnow()) is None
    job = _job(url, job_id)
    assert job.status == "running" and job.attempts == 1 and job.progress_at is not None
    _close(url, job_id)


def test_the_reaper_requeues_a_lost_workers_job(stack_settings: Settings) -> None:
    url = stack_settings.database_url
    kind = _kind()
    lost, alive = _queued_job(url, kind), _queued_job(url, kind)
    _claim(url, lost, at_minutes_ago=10)
    _claim(url, alive)
    with session_scope(url) as session:
        reaped = reap_stale_jobs(session, stack_settings.model_copy(update={"heartbeat_timeout_s": 60}), utcnow())
    assert (lost, 1) in reaped.requeued and alive not in [job_id for job_id, _ in reaped.requeued]
    job = _job(url, lost)
    assert (job.status, job.stage, job.attempts, job.sent_at) == ("queued", "queued", 1, None)
    [(event, payload)] = _events(url, lost)
    assert event == "requeued" and payload["attempt"] == 1 and "worker_lost" in payload["reason"]
    assert _job(url, alive).status == "running"
    # Re-queued and never sent: the relay sends it at its next pass, whatever its timeout.
    with session_scope(url) as session:
        assert lost in [job.id for job in JobRepository(session).unsent([kind], utcnow() - timedelta(hours=1))]
    # The next claim is its second attempt.
    assert _claim(url, lost) == Claim(lost, 2)
    _close(url, lost, alive)


def test_after_the_attempts_cap_a_lost_job_fails_worker_lost(stack_settings: Settings) -> None:
    url = stack_settings.database_url
    settings = stack_settings.model_copy(update={"heartbeat_timeout_s": 60, "max_attempts": 2})
    job_id = _queued_job(url, _kind())
    for attempt in (1, 2):
        assert _claim(url, job_id, at_minutes_ago=10).attempt == attempt
        with session_scope(url) as session:
            reaped = reap_stale_jobs(session, settings, utcnow())
    assert (job_id, "worker_lost") in reaped.failed
    job = _job(url, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)
    assert "2 attempts" in (job.error_message or "")
    assert [kind for kind, _ in _events(url, job_id)] == ["requeued", "failed"]


def test_a_stale_workers_late_writes_are_refused(stack_settings: Settings) -> None:
    """Attempt 1's worker comes back after its job was re-queued and claimed again: none of its writes land."""
    url = stack_settings.database_url
    job_id = _queued_job(url, _kind())
    first = _claim(url, job_id, at_minutes_ago=10)
    with session_scope(url) as session:
        reap_stale_jobs(session, stack_settings.model_copy(update={"heartbeat_timeout_s": 60}), utcnow())
    second = _claim(url, job_id)
    assert second.attempt == 2
    with session_scope(url) as session:
        jobs = JobRepository(session)
        assert not jobs.set_progress(first, "forgetting", 0.9, utcnow())
        assert not jobs.heartbeat(first, utcnow())
        assert not jobs.set_evidence(first, "late/per_example.json", 10)
        assert not jobs.finish(job_id, "succeeded", utcnow(), attempt=first.attempt)
        assert not jobs.fail(job_id, "internal_error", "late", utcnow(), attempt=first.attempt)
    job = _job(url, job_id)
    assert (job.status, job.stage, job.progress, job.evidence_key) == ("running", "starting", 0.0, None)
    # The current attempt's writes do land.
    with session_scope(url) as session:
        jobs = JobRepository(session)
        assert jobs.set_progress(second, "forgetting", 0.5, utcnow())
        assert jobs.set_evidence(second, "jobs/per_example.json", 10)
        assert jobs.finish(job_id, "succeeded", utcnow(), attempt=second.attempt)
    assert _job(url, job_id).status == "succeeded"


def test_progress_at_moves_only_when_the_job_advances(stack_settings: Settings) -> None:
    url = stack_settings.database_url
    job_id = _queued_job(url, _kind())
    claim = _claim(url, job_id)
    start = utcnow()
    with session_scope(url) as session:
        assert JobRepository(session).set_progress(claim, "forgetting", 0.5, start)
    for later, stage, fraction, moves in [
        (1, "forgetting", 0.5, False),  # the same point reported again
        (2, "forgetting", 0.6, True),  # further
        (3, "evaluating", 0.6, True),  # a new stage
    ]:
        with session_scope(url) as session:
            JobRepository(session).set_progress(claim, stage, fraction, start + timedelta(seconds=later))
        job = _job(url, job_id)
        assert (job.progress_at == start + timedelta(seconds=later)) is moves, (stage, fraction)
        assert job.heartbeat_at == start + timedelta(seconds=later)
    _close(url, job_id)


def test_a_job_that_stops_advancing_fails_stalled_though_its_worker_beats(stack_settings: Settings) -> None:
    url = stack_settings.database_url
    settings = stack_settings.model_copy(update={"heartbeat_timeout_s": 60, "stall_timeout_s": 300})
    stalled, advancing = _queued_job(url, _kind()), _queued_job(url, _kind())
    stalled_claim = _claim(url, stalled, at_minutes_ago=10)
    advancing_claim = _claim(url, advancing, at_minutes_ago=10)
    with session_scope(url) as session:
        jobs = JobRepository(session)
        jobs.set_progress(stalled_claim, "starting", 0.0, utcnow())  # the same point again: a beat, no progress
        jobs.set_progress(advancing_claim, "forgetting", 0.3, utcnow())
    with session_scope(url) as session:
        reaped = reap_stale_jobs(session, settings, utcnow())
    assert (stalled, "stalled") in reaped.failed and advancing not in [job_id for job_id, _ in reaped.failed]
    job = _job(url, stalled)
    assert (job.status, job.error_code, job.attempts) == ("failed", "stalled", 1)
    assert _job(url, advancing).status == "running"
    _close(url, advancing)


def test_the_relay_sends_queued_jobs_not_claimed_in_time(stack_settings: Settings) -> None:
    url = stack_settings.database_url
    kind = _kind()
    late, recent, never = (_queued_job(url, kind) for _ in range(3))
    with session_scope(url) as session:
        jobs = JobRepository(session)
        jobs.mark_sent(late, utcnow() - timedelta(minutes=10))
        jobs.mark_sent(recent, utcnow())
    with session_scope(url) as session:
        unsent = {job.id for job in JobRepository(session).unsent([kind], utcnow() - timedelta(minutes=1))}
    assert late in unsent and never in unsent and recent not in unsent
    _close(url, late, recent, never)


def _fair_order(database_url: str) -> None:
    """Tenant a submits ten jobs, then tenant b one; one worker claims and finishes them one at a time."""
    kind = _kind()
    a_jobs = [_queued_job(database_url, kind, tenant=f"fair-a-{kind}") for _ in range(10)]
    b_job = _queued_job(database_url, kind, tenant=f"fair-b-{kind}")
    order = []
    while True:
        with session_scope(database_url) as session:
            claim = JobRepository(session).claim_next(kind, utcnow())
            if claim is None:
                break
            JobRepository(session).finish(claim.job_id, "succeeded", utcnow(), attempt=claim.attempt)
        order.append(claim.job_id)
    assert sorted(order) == sorted([*a_jobs, b_job])
    # b's one job runs right after a's first, not after a's ten; a's run in the order submitted.
    assert order.index(b_job) == 1
    assert [job_id for job_id in order if job_id != b_job] == a_jobs


def test_claims_are_fair_across_tenants_on_postgres(stack_settings: Settings) -> None:
    _fair_order(stack_settings.database_url)


def test_claims_are_fair_across_tenants_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    _fair_order(url)


def test_a_tenant_with_a_running_job_waits_behind_one_without(stack_settings: Settings) -> None:
    url = stack_settings.database_url
    kind = _kind()
    busy_running, busy_queued = (_queued_job(url, kind, tenant=f"busy-{kind}") for _ in range(2))
    idle = _queued_job(url, kind, tenant=f"idle-{kind}")
    _claim(url, busy_running)
    with session_scope(url) as session:
        claim = JobRepository(session).claim_next(kind, utcnow())
    assert claim == Claim(idle, 1)
    _close(url, busy_running, busy_queued, idle)


def test_concurrent_claims_on_postgres_take_different_jobs(stack_settings: Settings) -> None:
    """The first claim's transaction is still open (its row locked) when the second runs: SKIP LOCKED hands the
    second the other job instead of blocking on the first or finding nothing."""
    url = stack_settings.database_url
    kind = _kind()
    jobs = {_queued_job(url, kind, tenant=f"c-{kind}") for _ in range(2)}
    claims: list[Claim | None] = []
    first_claimed, second_done = threading.Event(), threading.Event()

    def first() -> None:
        with session_scope(url) as session:
            claims.append(JobRepository(session).claim_next(kind, utcnow()))
            first_claimed.set()
            second_done.wait(timeout=30)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_claimed.wait(timeout=30)
    with session_scope(url) as session:
        claims.append(JobRepository(session).claim_next(kind, utcnow()))
    second_done.set()
    thread.join()
    assert all(claims) and {claim.job_id for claim in claims if claim} == jobs
    _close(url, *jobs)


def test_the_reaper_leaves_a_job_that_moved_after_it_looked(stack_settings: Settings) -> None:
    """Between the reaper's read and its write, the worker beat (or advanced): the job is neither failed nor
    re-queued."""
    url = stack_settings.database_url
    job_id = _queued_job(url, _kind())
    claim = _claim(url, job_id, at_minutes_ago=10)
    before = utcnow() - timedelta(minutes=1)
    with session_scope(url) as session:
        jobs = JobRepository(session)
        [seen] = [job for job in jobs.lost(before) if job.id == job_id]
        assert [job.id for job in jobs.stalled(before) if job.id == job_id] == [job_id]
        session.expunge(seen)
    with session_scope(url) as session:
        assert JobRepository(session).set_progress(claim, "forgetting", 0.5, utcnow())
    with session_scope(url) as session:
        jobs = JobRepository(session)
        assert not jobs.fail_stalled(seen, before, "stalled", utcnow())
        assert not jobs.fail_lost(seen, before, "lost", utcnow())
        assert not jobs.requeue(seen, before, "lost")
    assert _job(url, job_id).status == "running"
    _close(url, job_id)
