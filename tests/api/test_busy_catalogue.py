"""A busy or unreachable catalogue is a 503 with Retry-After in the error body, never a 500.

Each error is a real one, raised by SQLite, Postgres or SQLAlchemy's pool, and rendered by the app's handlers.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.errors import install_error_handlers
from tests.conftest import free_port


def _client_raising(error: Exception) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fails")
    def fails() -> None:
        raise error

    return TestClient(app, raise_server_exceptions=False)


def _caught(action: Callable[[], object]) -> Exception:
    with pytest.raises(Exception) as caught:
        action()
    assert isinstance(caught.value, Exception)
    return caught.value


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    with create_engine(url).begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
    return url


def _sqlite_locked(sqlite_url: str) -> Exception:
    holder = create_engine(sqlite_url).connect()
    holder.exec_driver_sql("BEGIN IMMEDIATE")  # holds the write lock
    writer = create_engine(sqlite_url, connect_args={"timeout": 0.1})
    try:
        with writer.begin() as connection:
            return _caught(lambda: connection.execute(text("INSERT INTO t VALUES (1)")))
    finally:
        holder.close()


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator:
    engine = create_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    yield engine
    engine.dispose()


def _postgres_error(postgres_engine, sqlstate: str) -> Exception:
    """Postgres raising the error with this SQLSTATE, as it does when a lock or a transaction fails."""
    with postgres_engine.connect() as connection:
        return _caught(
            lambda: connection.execute(text(f"DO $$ BEGIN RAISE EXCEPTION 'busy' USING ERRCODE = '{sqlstate}'; END $$"))
        )


def _pool_timeout(postgres_engine) -> Exception:
    with postgres_engine.connect():  # the pool's only connection
        return _caught(postgres_engine.connect)


def _unreachable() -> Exception:
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    return _caught(engine.connect)


def _assert_503(error: Exception, retry_after: str, detail: str) -> None:
    response = _client_raising(error).get("/fails")
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == retry_after
    assert response.json()["error"] == "service_unavailable"
    assert detail in response.json()["detail"]


def test_a_locked_sqlite_catalogue_is_503(sqlite_url: str) -> None:
    _assert_503(_sqlite_locked(sqlite_url), "1", "catalogue: the catalogue is busy (database is locked)")


@pytest.mark.parametrize(
    ("sqlstate", "detail"),
    [
        ("40001", "serialization failure"),
        ("40P01", "deadlock"),
        ("55P03", "a lock it could not take"),
    ],
)
def test_postgres_lock_and_serialization_failures_are_503(postgres_engine, sqlstate: str, detail: str) -> None:
    _assert_503(_postgres_error(postgres_engine, sqlstate), "1", detail)


def test_a_pool_timeout_is_503(postgres_engine) -> None:
    _assert_503(_pool_timeout(postgres_engine), "1", "every catalogue connection is in use")


def test_an_unreachable_catalogue_is_503() -> None:
    _assert_503(_unreachable(), "5", "the catalogue is unreachable")


def test_other_database_errors_stay_500(sqlite_url: str, postgres_engine) -> None:
    with create_engine(sqlite_url).connect() as connection:
        no_table = _caught(lambda: connection.execute(text("SELECT * FROM missing")))
    assert _client_raising(no_table).get("/fails").status_code == 500
    assert _client_raising(_postgres_error(postgres_engine, "23505")).get("/fails").status_code == 500
