from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import StatementError

from models.db import get_engine, session_scope
from models.migrate import upgrade
from models.repositories import TenantRepository
from models.tables import Tenant


def test_timestamps_read_back_in_utc_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    with session_scope(url) as session:
        TenantRepository(session).get_or_create("clock")
    with session_scope(url) as session:
        tenant = TenantRepository(session).get_by_name("clock")
        assert tenant is not None and tenant.created_at.tzinfo is not None
        assert tenant.created_at.utcoffset() == UTC.utcoffset(None)
    with pytest.raises(StatementError, match="naive datetime"), session_scope(url) as session:
        session.add(Tenant(name="naive", created_at=datetime(2026, 1, 1)))
        session.flush()


def test_the_embedded_catalogue_lets_writers_wait_for_each_other(tmp_path: Path) -> None:
    # The API and the worker write one SQLite file: WAL lets readers run beside a writer, the busy timeout makes a
    # writer wait for the lock instead of failing with "database is locked".
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    with get_engine(url).connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
