"""A running job's progress writes survive a busy catalogue: they wait for the lock, or are skipped, never fatal."""

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from lethe.settings import Settings
from models.db import session_scope
from models.migrate import upgrade
from models.repositories import Claim, JobEventRepository, JobRepository, TenantRepository
from models.tables import utcnow
from tests.conftest import forget_job_spec
from worker.pipelines.jobs import ProgressReporter, holding


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path)  # the embedded default: a SQLite catalogue
    upgrade(settings.database_url)
    return settings


def _running_job(settings: Settings) -> Claim:
    with session_scope(settings.database_url) as session:
        tenant = TenantRepository(session).get_or_create("progress")
        job = JobRepository(session).create_queued(tenant.id, forget_job_spec(uuid.uuid4()))
        claim = JobRepository(session).claim(job.id, utcnow())
        assert claim is not None
        return claim


def _stage(settings: Settings, job_id: uuid.UUID) -> tuple[str, list[str]]:
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None
        return job.stage, [event.type for event in JobEventRepository(session).list(job_id)]


def test_a_progress_write_waits_for_another_writer(settings: Settings) -> None:
    claim = _running_job(settings)
    job_id = claim.job_id
    holder = sqlite3.connect(settings.data_dir / "lethe.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction, for a second
    threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
    started = time.monotonic()
    with holding(claim):
        ProgressReporter(settings, job_id)("forgetting", 0.5)
    assert time.monotonic() - started >= 0.9  # it waited for the lock rather than failing
    holder.close()
    assert _stage(settings, job_id) == ("forgetting", ["queued", "stage", "progress"])


def _database_is_locked(tmp_path: Path) -> Exception:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    holder = create_engine(url).connect()
    holder.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    holder.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        with create_engine(url, connect_args={"timeout": 0.05}).begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (1)"))
    except Exception as exc:
        return exc
    finally:
        holder.close()
    raise AssertionError("the insert did not find the database locked")


def test_a_busy_catalogue_skips_a_progress_write_and_the_job_runs_on(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = _running_job(settings)
    job_id = claim.job_id
    locked = _database_is_locked(tmp_path)
    set_progress = JobRepository.set_progress
    calls = []

    def busy_once(self: JobRepository, *args: object) -> bool:
        calls.append(args)
        if len(calls) == 1:
            raise locked
        return set_progress(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(JobRepository, "set_progress", busy_once)
    with holding(claim):
        report = ProgressReporter(settings, job_id)
    report("forgetting", 0.1)  # the catalogue is busy: skipped, not fatal
    assert _stage(settings, job_id) == ("starting", ["queued"])
    report("forgetting", 0.2)  # the next report writes the stage it missed
    assert _stage(settings, job_id) == ("forgetting", ["queued", "stage", "progress"])
