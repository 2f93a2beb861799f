"""Migrations run on both catalogues: SQLite (embedded default) and Postgres (the stack)."""

import uuid
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, inspect

from models.migrate import downgrade, upgrade
from models.tables import Base
from tests.conftest import POSTGRES_ADMIN_URL

TABLES = {
    "tenants",
    "api_keys",
    "datasets",
    "base_models",
    "jobs",
    "job_events",
    "metrics",
    "adapters",
    "audits",
    "audit_results",
    "workers",
    "idempotency_keys",
    "curve_points",
}


def _round_trip(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert tables >= TABLES
    # The migrated schema has every column the ORM declares.
    for table in Base.metadata.sorted_tables:
        columns = {c["name"] for c in inspect(engine).get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, table.name
    downgrade(url)
    assert not set(inspect(engine).get_table_names()) & TABLES
    upgrade(url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    engine.dispose()


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'catalogue.db'}")


def test_migrations_on_postgres() -> None:
    name = f"lethe_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        _round_trip(f"{base}/{name}")
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
