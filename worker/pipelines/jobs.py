"""What every job pipeline shares: claiming, heartbeats, progress, failures with codes, undoable stored objects."""

import logging
import platform
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

from sqlalchemy.orm import Session

from lethe.settings import Settings
from models.db import UnitOfWork, session_scope, unavailable
from models.repositories import JobEventRepository, JobRepository, WorkerRepository
from models.tables import utcnow
from storage import ObjectStore

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


def job_heartbeat(settings: Settings, job_id: uuid.UUID) -> Heartbeat:
    """The heartbeat of a running job (the reaper fails a job whose heartbeat is older than the timeout)."""
    return Heartbeat(
        settings, f"heartbeat-{job_id}", lambda session: JobRepository(session).heartbeat(job_id, utcnow())
    )


def worker_liveness(settings: Settings, worker_id: str) -> Heartbeat:
    """The worker process's beat, which /readyz reads: alive, whether it runs a job or waits for one."""
    return Heartbeat(
        settings, f"liveness-{worker_id}", lambda session: WorkerRepository(session).beat(worker_id, utcnow())
    )


class ProgressReporter:
    """Writes the engine's progress to the job row, at most every `min_interval_s` within a stage."""

    def __init__(self, settings: Settings, job_id: uuid.UUID, min_interval_s: float = 2.0) -> None:
        self.settings, self.job_id, self.min_interval_s = settings, job_id, min_interval_s
        self._stage = ""
        self._last_write = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        stage_changed = stage != self._stage
        if not stage_changed and now - self._last_write < self.min_interval_s and fraction < 1.0:
            return
        try:
            with session_scope(self.settings.database_url) as session:
                running = JobRepository(session).set_progress(
                    self.job_id, stage, min(max(fraction, 0.0), 1.0), utcnow()
                )
                if running and stage_changed:
                    JobEventRepository(session).append(self.job_id, "stage", {"stage": stage})
        except Exception as exc:
            cause = unavailable(exc)
            if cause is None:
                raise
            # Progress is a report, not the work: a busy catalogue must not fail the job. Nothing is remembered,
            # so the next report writes this stage again.
            log.warning("job %s: progress not written, %s", self.job_id, cause.reason)
            return
        if not running:
            # Cancelled (or reaped) while it ran: stop here; nothing is stored.
            raise JobFailure("job_closed", "the job was closed while it ran (cancelled or reaped)")
        self._stage, self._last_write = stage, now


def fail_job(settings: Settings, job_id: uuid.UUID, code: str, message: str) -> None:
    with session_scope(settings.database_url) as session:
        JobRepository(session).fail(job_id, code, message, utcnow())


def put_undoable(work: UnitOfWork, store: ObjectStore, key: str, data: bytes, content_type: str) -> None:
    """Store an object that rows of `work` will point at; it is deleted again if `work` does not commit."""
    store.put(key, data, content_type=content_type)
    work.undo_on_rollback(partial(store.delete, key))


def run_job(settings: Settings, job_id: uuid.UUID, body: Callable[[], None]) -> str:
    """Claim the job, run `body` with heartbeats, and record a failure with its code; the final status.

    Safe to call twice for one job: a second delivery finds it claimed and returns "skipped".
    """
    with session_scope(settings.database_url) as session:
        if not JobRepository(session).claim(job_id, utcnow()):
            log.info("job %s is not queued (delivered twice?); skipping", job_id)
            return "skipped"
        JobEventRepository(session).append(job_id, "started", {"worker": platform.node()})
    try:
        with job_heartbeat(settings, job_id):
            body()
        return "succeeded"
    except JobFailure as failure:
        log.warning("job %s stopped: %s (%s)", job_id, failure.code, failure.message)
        fail_job(settings, job_id, failure.code, failure.message)
    except MemoryError:
        fail_job(settings, job_id, "out_of_memory", "the worker ran out of memory")
    except Exception as exc:
        log.exception("job %s failed", job_id)
        fail_job(settings, job_id, "internal_error", f"{type(exc).__name__}: {exc}")
    return "failed"
