"""What every job pipeline shares: claiming, heartbeats, progress, the time limit, failures with codes, undoable
stored objects."""

import contextlib
import logging
import os
import platform
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from lethe.settings import Settings
from models.db import UnitOfWork, session_scope, unavailable
from models.repositories import Claim, JobEventRepository, JobRepository, WorkerRepository
from models.tables import utcnow
from storage import ObjectStore
from worker.engine.lm.placement import worker_placement
from worker.engine.metrics.values import CurvePoint

log = logging.getLogger("lethe.worker")


class JobFailure(Exception):
    """A failure with an error code the user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Heartbeat:
    """Calls `beat(session)` every heartbeat interval from a thread, in a short session of its own, while the
    engine holds the main thread: a job's heartbeat, or the worker process's liveness."""

    def __init__(self, settings: Settings, name: str, beat: Callable[[Session], object]) -> None:
        self.settings, self.name, self.beat = settings, name, beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                with session_scope(self.settings.database_url) as session:
                    self.beat(session)
            except Exception:
                log.exception("%s failed", self.name)
            if self._stop.wait(self.settings.heartbeat_interval_s):
                return

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def job_heartbeat(settings: Settings, claim: Claim, on_closed: Callable[[], None]) -> Heartbeat:
    """The heartbeat of a running job (the reaper re-queues a job whose heartbeat is older than the timeout); it
    beats only while the claim is still the job's, and calls `on_closed()` when it no longer is."""

    def beat(session: Session) -> None:
        jobs = JobRepository(session)
        if not jobs.heartbeat(claim, utcnow()):
            job = jobs.get_any_tenant(claim.job_id)
            # Succeeded: by this very worker, a moment before the heartbeat stops; nothing to interrupt.
            if job is None or job.status != "succeeded":
                on_closed()

    return Heartbeat(settings, f"heartbeat-{claim.job_id}", beat)


def worker_liveness(settings: Settings, worker_id: str) -> Heartbeat:
    """The worker process's beat, which /readyz reads: alive, whether it runs a job or waits for one."""
    return Heartbeat(
        settings, f"liveness-{worker_id}", lambda session: WorkerRepository(session).beat(worker_id, utcnow())
    )


# The claim this worker runs its job under, set by `run_job` around the job's body: the pipelines' writes (progress,
# evidence, the final status) name its attempt, so a worker whose job was re-queued meanwhile writes nothing.
_held: ContextVar[Claim | None] = ContextVar("lethe_held_claim", default=None)


@contextlib.contextmanager
def holding(claim: Claim) -> Iterator[Claim]:
    """While inside, this thread holds `claim`: `held_claim(claim.job_id)` returns it (run_job's body runs inside)."""
    token = _held.set(claim)
    try:
        yield claim
    finally:
        _held.reset(token)


def held_claim(job_id: uuid.UUID) -> Claim:
    """The claim this worker holds on `job_id` while `run_job` runs the job's body."""
    claim = _held.get()
    if claim is None or claim.job_id != job_id:
        raise RuntimeError(f"job {job_id} is not the job this worker claimed")
    return claim


# A `progress` event is written when the fraction done has risen by this much since the last one (or the stage or
# the curve point is new): a job writes at most about 1 / PROGRESS_EVENT_STEP of them for its fraction, however many
# steps it trains.
PROGRESS_EVENT_STEP = 0.01


class ProgressReporter:
    """Writes the engine's progress to the job row, with the `stage` and `progress` events its readers follow.

    The row is written at a new stage, at a new curve point, when the fraction first reaches 1, and otherwise at most
    every `min_interval_s`. A row write carries a `stage` event when the stage is new, and a `progress` event
    ({stage, fraction, curve}) when the stage or the curve point is new, or the fraction has risen by
    PROGRESS_EVENT_STEP since the last one, or first reached 1. The fraction reported is non-decreasing within an
    attempt (the largest seen: a pipeline's own stages after the engine's, `storing`, report 0). So an attempt writes
    at most 1 / PROGRESS_EVENT_STEP + 1 + 2 × its changes of stage + its curve points of these events: they grow
    with a job's stages and evaluations, never with its training steps.
    """

    def __init__(self, settings: Settings, job_id: uuid.UUID, min_interval_s: float = 2.0) -> None:
        self.settings, self.claim, self.min_interval_s = settings, held_claim(job_id), min_interval_s
        self._reported = ""  # the stage of the latest report
        self._fraction = 0.0  # the largest fraction reported
        self._curve: dict[str, Any] | None = None
        self._curve_written = True
        # What the catalogue has: the stage and fraction of the last row write, and the last progress event's fraction.
        self._stage = ""
        self._last_write = 0.0
        self._written_fraction = 0.0
        self._event_fraction: float | None = None

    def __call__(self, stage: str, fraction: float) -> None:
        self._reported = stage
        self._fraction = max(self._fraction, min(max(fraction, 0.0), 1.0))
        self._write()

    def curve(self, point: CurvePoint) -> None:
        """A new point of the forgetting curve: written at once, with the stage and fraction reported last."""
        self._curve, self._curve_written = asdict(point), False
        if self._reported:
            self._write()

    def _write(self) -> None:
        stage, fraction, now = self._reported, self._fraction, time.monotonic()
        stage_changed = stage != self._stage
        completed = fraction >= 1.0 > self._written_fraction
        if not (stage_changed or not self._curve_written or completed) and now - self._last_write < self.min_interval_s:
            return
        last = self._event_fraction
        # The epsilon: 0.03 - 0.02 is a little less than 0.01 in binary floating point.
        progressed = last is None or fraction - last >= PROGRESS_EVENT_STEP - 1e-9 or (fraction >= 1.0 > last)
        with_event = stage_changed or not self._curve_written or progressed
        job_id = self.claim.job_id
        try:
            with session_scope(self.settings.database_url) as session:
                held = JobRepository(session).set_progress(self.claim, stage, fraction, utcnow())
                if held and stage_changed:
                    JobEventRepository(session).append(job_id, "stage", {"stage": stage})
                if held and with_event:
                    payload = {"stage": stage, "fraction": round(fraction, 4), "curve": self._curve}
                    JobEventRepository(session).append(job_id, "progress", payload)
        except Exception as exc:
            cause = unavailable(exc)
            if cause is None:
                raise
            # Progress is a report, not the work: a busy catalogue must not fail the job. Nothing is remembered,
            # so the next report writes this stage (and its events) again.
            log.warning("job %s: progress not written, %s", job_id, cause.reason)
            return
        if not held:
            # Cancelled, failed or re-queued while it ran: stop here; nothing is stored.
            raise JobFailure("job_closed", "the job was closed or re-queued while it ran (cancelled or reaped)")
        self._stage, self._last_write, self._written_fraction = stage, now, fraction
        if with_event:
            self._event_fraction, self._curve_written = fraction, True


class JobTimeLimitExceeded(Exception):
    """Raised in the job's thread when its attempt reaches the time limit."""


# After the time limit, how long a job has to stop before its worker process is ended.
HARD_LIMIT_GRACE_S = 60.0
# The exit status of a worker ended by the hard time limit (EX_SOFTWARE).
HARD_LIMIT_EXIT_STATUS = 70


class TimeLimit:
    """An attempt's time limit, soft then hard, as Celery's `soft_time_limit` and `time_limit` would be.

    Celery enforces those in its prefork pool only; the worker runs the solo pool (one job per process, the base
    LM kept across jobs), so they are enforced here the same way. At `limit_s` a `JobTimeLimitExceeded` is raised
    in the main thread (SIGALRM), which `run_job` records as `time_limit`. A job that does not stop within
    `grace_s` more (stuck in native code) is failed with `time_limit` from a timer thread, and the worker process
    exits (`exit`) so that its supervisor starts a fresh one: the job's thread cannot be stopped any other way.

    The same interruption stops a job whose claim is gone (`interrupt_closed`, from the job's heartbeat): one the
    reaper failed as stalled while it hangs in Python code, or one cancelled between its progress reports.
    """

    def __init__(
        self,
        settings: Settings,
        claim: Claim,
        limit_s: float,
        grace_s: float = HARD_LIMIT_GRACE_S,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.settings, self.claim, self.limit_s, self.exit = settings, claim, limit_s, exit
        self._hard = threading.Timer(limit_s + grace_s, self._hard_limit)
        self._hard.daemon = True
        self._old_handler: Any = None
        # Signals reach the main thread only (Celery's solo pool runs tasks there); elsewhere only the hard limit.
        self._soft = threading.current_thread() is threading.main_thread()
        # One interruption at most, and none once the body has returned: a second exception could land in the
        # clean-up of the first (a rolled-back unit of work deleting its objects), or in a job that succeeded.
        self._lock = threading.Lock()
        self._closed = self._interrupted = self._done = False

    def _soft_limit(self, _signum: int, _frame: object) -> None:
        with self._lock:
            if self._interrupted or self._done:
                return
            self._interrupted = True
        if self._closed:
            raise JobFailure("job_closed", "the job was closed or re-queued while it ran (cancelled or reaped)")
        raise JobTimeLimitExceeded(f"the job ran longer than its time limit of {self.limit_s:g} s")

    def interrupt_closed(self) -> None:
        """Raise `JobFailure("job_closed")` in the job's thread now: its claim is no longer the job's."""
        with self._lock:
            if self._closed or self._done or not self._soft:
                return
            self._closed = True
        log.warning("job %s: its claim is gone (cancelled, failed or re-queued); stopping it", self.claim.job_id)
        signal.setitimer(signal.ITIMER_REAL, 0.001)

    def body_returned(self) -> None:
        """From here on the job is not interrupted."""
        with self._lock:
            self._done = True

    def _hard_limit(self) -> None:
        message = f"the job ran longer than its time limit of {self.limit_s:g} s and did not stop; worker restarted"
        log.error("job %s: %s", self.claim.job_id, message)
        try:
            fail_job(self.settings, self.claim, "time_limit", message)
        finally:
            self.exit(HARD_LIMIT_EXIT_STATUS)

    def __enter__(self) -> "TimeLimit":
        if self._soft:
            self._old_handler = signal.signal(signal.SIGALRM, self._soft_limit)
            signal.setitimer(signal.ITIMER_REAL, self.limit_s)
        self._hard.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._hard.cancel()
        if self._soft:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler)


def fail_job(settings: Settings, claim: Claim, code: str, message: str) -> bool:
    """Fail the claimed job; False when the claim is no longer the job's (closed, or re-queued meanwhile)."""
    with session_scope(settings.database_url) as session:
        return JobRepository(session).fail(claim.job_id, code, message, utcnow(), attempt=claim.attempt)


def put_undoable(work: UnitOfWork, store: ObjectStore, key: str, data: bytes, content_type: str) -> None:
    """Store an object that rows of `work` will point at; it is deleted again if `work` does not commit."""
    store.put(key, data, content_type=content_type)
    work.undo_on_rollback(partial(store.delete, key))


def run_job(settings: Settings, job_id: uuid.UUID, body: Callable[[], None]) -> str:
    """Claim this job, run `body` with heartbeats and its time limit, and record a failure with its code; the
    final status ("skipped" when the job was not queued: a second delivery, or a cancelled job)."""
    with session_scope(settings.database_url) as session:
        claim = JobRepository(session).claim(job_id, utcnow())
        if claim is None:
            log.info("job %s is not queued (delivered twice?); skipping", job_id)
            return "skipped"
        _started(session, claim)
    return _run_claimed_job(settings, claim, body)


def run_next_job(
    settings: Settings, kind: str, body: Callable[[uuid.UUID], None], woken_by: uuid.UUID | None = None
) -> str:
    """Claim the next queued job of `kind` in fair order and run `body(job_id)` as `run_job` does; "skipped" when
    none is queued. A broker message is a wake-up: `woken_by`, the job it was sent for, only goes to the log."""
    with session_scope(settings.database_url) as session:
        claim = JobRepository(session).claim_next(kind, utcnow())
        if claim is None:
            log.info("no %s job is queued (woken by job %s, already claimed); nothing to run", kind, woken_by)
            return "skipped"
        _started(session, claim)
    log.info("claimed %s job %s, attempt %d (woken by job %s)", kind, claim.job_id, claim.attempt, woken_by)
    return _run_claimed_job(settings, claim, lambda: body(claim.job_id))


def _started(session: Session, claim: Claim) -> None:
    """Record who runs the claimed attempt, on which device and in which precision (the job's `device` and
    `precision`, and its `running` event); `worker_placement` is the rule the base LM is loaded by."""
    placement = worker_placement()
    device, precision = placement.device_label(), placement.precision_label()
    JobRepository(session).set_runtime(claim, device, precision)
    JobEventRepository(session).append(
        claim.job_id,
        "running",
        {"worker": platform.node(), "attempt": claim.attempt, "device": device, "precision": precision},
    )
    log.info("job %s, attempt %d: runs on %s in %s", claim.job_id, claim.attempt, device, precision)


def _run_claimed_job(settings: Settings, claim: Claim, body: Callable[[], None]) -> str:
    try:
        # The heartbeat stops before the time limit is disarmed: it may interrupt the job only while the limit's
        # signal handler is in place.
        with (
            holding(claim),
            TimeLimit(settings, claim, settings.job_time_limit_s) as limit,
            job_heartbeat(settings, claim, on_closed=limit.interrupt_closed),
        ):
            body()
            limit.body_returned()
        return "succeeded"
    except JobFailure as failure:
        log.warning("job %s stopped: %s (%s)", claim.job_id, failure.code, failure.message)
        code, message = failure.code, failure.message
    except JobTimeLimitExceeded as exc:
        log.warning("job %s stopped: time_limit (%s)", claim.job_id, exc)
        code, message = "time_limit", str(exc)
    except MemoryError:
        code, message = "out_of_memory", "the worker ran out of memory"
    except Exception as exc:
        log.exception("job %s failed", claim.job_id)
        code, message = "internal_error", f"{type(exc).__name__}: {exc}"
    if fail_job(settings, claim, code, message):
        return "failed"
    log.warning("job %s: attempt %d no longer holds it (closed or re-queued)", claim.job_id, claim.attempt)
    return "closed"
