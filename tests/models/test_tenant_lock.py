"""`TenantRepository.lock`: a second transaction locking the same tenant waits for the first to end, on both
catalogues (SQLite in the embedded default, Postgres in the stack)."""

import threading
import time
from pathlib import Path

import pytest

from lethe.settings import Settings
from models.db import session_scope
from models.migrate import upgrade
from models.repositories import JobRepository, TenantRepository
from tests.conftest import forget_job_spec


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, stack_settings: Settings) -> str:
    if request.param == "postgres":
        return stack_settings.database_url
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    return url


def test_a_second_lock_waits_until_the_first_transaction_commits(database_url: str) -> None:
    with session_scope(database_url) as session:
        tenant_id = TenantRepository(session).get_or_create(f"lock-{time.monotonic_ns()}").id
    second_counted: list[int] = []

    def second() -> None:
        with session_scope(database_url) as session:
            TenantRepository(session).lock(tenant_id)
            second_counted.append(JobRepository(session).count_active(tenant_id))

    with session_scope(database_url) as session:
        TenantRepository(session).lock(tenant_id)
        JobRepository(session).create_queued(tenant_id, forget_job_spec(tenant_id))
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)
        # Still waiting for this transaction's lock: it has counted nothing yet.
        assert thread.is_alive() and second_counted == []
    thread.join(timeout=10)
    # It counted after the commit, so it sees the job.
    assert second_counted == [1]
