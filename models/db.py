"""Engines, sessions and units of work for the catalogue (SQLite in the embedded default, Postgres in the stack)."""

import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from models.repositories import JobRepository
from models.tables import utcnow

log = logging.getLogger("lethe.catalogue")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The API and the worker are separate processes writing one file: WAL lets readers run beside the
    # writer, and the busy timeout makes a writer wait for the lock instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# SQLSTATEs of a Postgres that is busy or going away, not of a bad statement: retrying later can succeed.
_POSTGRES_TRANSIENT = {
    "40001": "a serialization failure",
    "40P01": "a deadlock",
    "55P03": "a lock it could not take",
    "57014": "a statement timeout",
    "53300": "too many connections",
    "57P01": "an administrator shutdown",
    "57P03": "a server that cannot connect now",
}
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


@dataclass(frozen=True)
class Unavailable:
    """Why the catalogue cannot serve a statement right now; `busy` (it will free up soon) or unreachable."""

    reason: str
    busy: bool


def unavailable(error: BaseException) -> Unavailable | None:
    """What made the catalogue unavailable for `error` (busy, locked, unreachable), or None when the error is of
    another kind (a bad statement, a constraint) and retrying the same request would not help."""
    if isinstance(error, exc.TimeoutError):
        return Unavailable("every catalogue connection is in use (timed out waiting for one)", busy=True)
    if not isinstance(error, exc.DBAPIError):
        return None
    if isinstance(error.orig, sqlite3.OperationalError):
        message = str(error.orig)
        if message in _SQLITE_BUSY:
            return Unavailable(f"the catalogue is busy ({message})", busy=True)
        if message.startswith("unable to open database file"):
            return Unavailable(f"the catalogue is unreachable ({message})", busy=False)
        return None
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate in _POSTGRES_TRANSIENT:
        return Unavailable(f"the catalogue is busy ({_POSTGRES_TRANSIENT[sqlstate]})", busy=True)
    if error.connection_invalidated or (
        isinstance(error, exc.OperationalError) and (sqlstate is None or sqlstate.startswith("08"))
    ):
        return Unavailable("the catalogue is unreachable", busy=False)
    return None


@lru_cache(maxsize=8)
def get_engine(database_url: str) -> Engine:
    """One engine per URL per process."""
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(database_url, pool_pre_ping=True)


@lru_cache(maxsize=8)
def get_sessionmaker(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(database_url), expire_on_commit=False)


class BrokerUnavailable(Exception):
    """Jobs were committed but the broker would not take them; each is already failed with `broker_unavailable`."""

    def __init__(self, job_ids: list[uuid.UUID], reason: str) -> None:
        super().__init__(f"could not enqueue job {', '.join(map(str, job_ids))}: {reason}")
        self.job_ids, self.reason = job_ids, reason


class UnitOfWork:
    """One transaction, and what must wait for its commit or undo around it.

    Code inside never commits. It writes rows through `session` and registers what goes with the transaction:
    `enqueue_after_commit(job_id, send)` sends a new job's id to the broker only once the job is committed (a worker
    handed an id before that would not find the row); `undo_on_rollback(undo)` removes what was written outside
    the catalogue (an object in the store) when the rows that point at it are not committed. Only the boundary that
    opened it, `unit_of_work` (the API's request dependency, the worker's short sessions), calls `commit`.

    The one rule for a job the broker refuses lives in `commit`: it is marked failed (`broker_unavailable`) and that
    is committed too, so no job sits queued with no message behind it; then `BrokerUnavailable` tells the boundary.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._sends: list[tuple[uuid.UUID, Callable[[], None]]] = []
        self._undos: list[Callable[[], None]] = []
        self._refusal_undos: list[Callable[[Session], None]] = []
        self._after_commit: list[Callable[[], None]] = []

    def enqueue_after_commit(self, job_id: uuid.UUID, send: Callable[[], None]) -> None:
        """Call `send()` (which puts `job_id` on the broker) once the transaction has committed.

        The job is marked sent in this transaction: if the process dies between the commit and the send, the relay
        sends it once its redelivery timeout has passed.
        """
        JobRepository(self.session).mark_sent(job_id, utcnow())
        self._sends.append((job_id, send))

    def undo_on_rollback(self, undo: Callable[[], None]) -> None:
        """Call `undo()` if the transaction rolls back (or fails to commit)."""
        self._undos.append(undo)

    def after_commit(self, then: Callable[[], None]) -> None:
        """Call `then()` once the transaction has committed (clean-up the commit makes safe; its failure is only
        logged: the transaction stands)."""
        self._after_commit.append(then)

    def undo_if_refused(self, undo: Callable[[Session], None]) -> None:
        """Call `undo(session)` if the broker refuses a registered job, in the transaction that fails the job: for
        a committed row that says the request succeeded (its idempotency key)."""
        self._refusal_undos.append(undo)

    def commit(self) -> None:
        """Commit, then send the registered jobs; a job the broker refuses is failed (committed) and reported."""
        self.session.commit()
        self._undos.clear()
        afters, self._after_commit = self._after_commit, []
        for then in afters:
            try:
                then()
            except Exception:
                log.exception("a clean-up after a commit failed")
        sends, self._sends = self._sends, []
        refusal_undos, self._refusal_undos = self._refusal_undos, []
        refused: list[uuid.UUID] = []
        reason = ""
        for job_id, send in sends:
            try:
                send()
            except Exception as exc:
                log.exception("could not enqueue job %s", job_id)
                reason = f"broker: could not enqueue the job ({exc})"
                JobRepository(self.session).fail(job_id, "broker_unavailable", reason, utcnow())
                refused.append(job_id)
        if refused:
            for undo in refusal_undos:
                undo(self.session)
            self.session.commit()
            raise BrokerUnavailable(refused, reason)

    def rollback(self) -> None:
        """Roll back and undo what was written outside the catalogue; registered jobs are never sent."""
        self.session.rollback()
        self._sends.clear()
        self._refusal_undos.clear()
        self._after_commit.clear()
        undos, self._undos = self._undos, []
        for undo in reversed(undos):
            try:
                undo()
            except Exception:
                # The error that caused the rollback is the one to report; this one is only logged.
                log.exception("could not undo a write of a rolled-back transaction")


@contextmanager
def unit_of_work(database_url: str) -> Iterator[UnitOfWork]:
    """A unit of work on its own session: committed (then its jobs sent) on success, rolled back on error."""
    work = UnitOfWork(get_sessionmaker(database_url)())
    try:
        yield work
        work.commit()
    except BaseException:
        # After a commit that went through (BrokerUnavailable) this rolls back nothing and undoes nothing.
        work.rollback()
        raise
    finally:
        work.session.close()


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """A short unit of work that needs only its session: commit on success, roll back on error."""
    with unit_of_work(database_url) as work:
        yield work.session
