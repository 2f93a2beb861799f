"""Migrations run on both catalogues: SQLite (embedded default) and Postgres (the stack)."""

import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import IntegrityError

from models.migrate import downgrade, upgrade
from models.tables import Base, utcnow
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
    "audit_diagnostics",
    "workers",
    "idempotency_keys",
    "curve_points",
    "deletions",
    "tombstones",
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


_TENANTS = sa.table("tenants", sa.column("id", sa.Uuid()), sa.column("name"), sa.column("created_at", sa.DateTime()))
_JOBS = sa.table(
    "jobs",
    *(sa.column(name) for name in ("kind", "status", "stage", "progress", "attempts")),
    sa.column("id", sa.Uuid()),
    sa.column("tenant_id", sa.Uuid()),
    sa.column("spec", sa.JSON()),
    sa.column("created_at", sa.DateTime()),
)
_METRICS = sa.table("metrics", *(sa.column(n) for n in ("stage", "split", "name", "value", "layer", "step")))
_METRICS.append_column(sa.column("job_id", sa.Uuid()))


def _curve_points_move_and_metric_keys_become_unique(url: str) -> None:
    """Metrics with a step (curve points, before 0010) move to curve_points; then a key takes one value only."""
    upgrade(url, "0009")
    engine = create_engine(url)
    tenant_id, job_id = uuid.uuid4(), uuid.uuid4()
    metric = {"job_id": job_id, "stage": "forgotten", "split": "forget_train", "name": "accuracy", "layer": None}
    with engine.begin() as connection:
        connection.execute(sa.insert(_TENANTS).values(id=tenant_id, name="t", created_at=utcnow()))
        job = {"kind": "forget", "status": "succeeded", "stage": "done", "progress": 1.0, "attempts": 1, "spec": {}}
        connection.execute(sa.insert(_JOBS).values(id=job_id, tenant_id=tenant_id, created_at=utcnow(), **job))
        connection.execute(
            sa.insert(_METRICS),
            [metric | {"value": v, "step": step} for v, step in [(0.96, 5), (0.9, 10), (0.76, None)]],
        )
    upgrade(url)
    with engine.begin() as connection:
        rows = connection.execute(sa.text("SELECT stage, split, name, value, layer FROM metrics")).all()
        assert [tuple(r) for r in rows] == [("forgotten", "forget_train", "accuracy", 0.76, None)]
        points = connection.execute(sa.text("SELECT split, name, step, value FROM curve_points ORDER BY step")).all()
        assert [tuple(p) for p in points] == [
            ("forget_train", "accuracy", 5, 0.96),
            ("forget_train", "accuracy", 10, 0.9),
        ]
    # A NULL layer is one key, not a fresh one each time.
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(sa.insert(_METRICS).values(**metric, value=0.5))
    engine.dispose()
    downgrade(url)


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    _curve_points_move_and_metric_keys_become_unique(f"sqlite:///{tmp_path / 'moved.db'}")
    _round_trip(f"sqlite:///{tmp_path / 'catalogue.db'}")


def test_migrations_on_postgres() -> None:
    name = f"lethe_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        _curve_points_move_and_metric_keys_become_unique(f"{base}/{name}")
        _round_trip(f"{base}/{name}")
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
