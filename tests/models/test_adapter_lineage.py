"""Adapter lineage in the catalogue: migration 0014's parent_adapter_id (a foreign key to adapters, on SQLite and
Postgres), and the repository's walk up to the root."""

import uuid
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, inspect

from models.db import session_scope
from models.migrate import downgrade, upgrade
from models.repositories import AdapterRepository, JobRepository, TenantRepository
from models.tables import Adapter, Job
from tests.conftest import POSTGRES_ADMIN_URL


def _parent_key_after_0014(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    [foreign_key] = [k for k in inspect(engine).get_foreign_keys("adapters") if k["referred_table"] == "adapters"]
    assert foreign_key["name"] == "fk_adapters_parent_adapter_id_adapters"
    assert (foreign_key["constrained_columns"], foreign_key["referred_columns"]) == (["parent_adapter_id"], ["id"])
    engine.dispose()
    downgrade(url, "0012")
    engine = create_engine(url)
    assert "parent_id" in {c["name"] for c in inspect(engine).get_columns("adapters")}
    engine.dispose()


def test_0014_renames_the_parent_key_on_sqlite(tmp_path: Path) -> None:
    _parent_key_after_0014(f"sqlite:///{tmp_path / 'catalogue.db'}")


def test_0014_renames_the_parent_key_on_postgres() -> None:
    name = f"lethe_lineage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        _parent_key_after_0014(f"{base}/{name}")
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_ancestors_run_from_the_parent_to_the_root(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    with session_scope(url) as session:
        tenant = TenantRepository(session).get_or_create("lineage")
        parent_id: uuid.UUID | None = None
        chain = []
        for _ in range(3):
            job = JobRepository(session).add(Job(tenant_id=tenant.id, kind="forget", status="succeeded", spec={}))
            adapter = AdapterRepository(session).add(
                Adapter(
                    tenant_id=tenant.id,
                    job_id=job.id,
                    base_model="tiny",
                    object_key="k",
                    sha256="0" * 64,
                    size_bytes=0,
                    parent_adapter_id=parent_id,
                )
            )
            chain.append(adapter)
            parent_id = adapter.id
        root, middle, leaf = chain
        adapters = AdapterRepository(session)
        assert [a.id for a in adapters.ancestors(leaf)] == [middle.id, root.id]
        assert [a.id for a in adapters.ancestors(root)] == []
