"""`lethe tenants retention` on the embedded catalogue: what `PUT /v1/tenants/{tenant}/retention` sets."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from lethe.settings import get_settings
from models.db import session_scope
from models.repositories import TenantRepository


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LETHE_DATA_DIR", str(tmp_path / "data"))
    for name in ("LETHE_DATABASE_URL", "LETHE_STORAGE_URL", "LETHE_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def _retention_of(data_dir: Path, tenant: str) -> int | None:
    with session_scope(f"sqlite:///{data_dir / 'lethe.db'}") as session:
        found = TenantRepository(session).get_by_name(tenant)
        assert found is not None
        return found.evidence_retention_days


def test_retention_is_set_and_cleared_and_bad_input_changes_nothing(data_dir: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["api-keys", "create", "--tenant", "acme"]).exit_code == 0  # makes the tenant

    done = runner.invoke(app, ["tenants", "retention", "acme", "--days", "30"])
    assert done.exit_code == 0, done.output
    assert "tenant acme: evidence kept 30 days" in done.stdout
    assert _retention_of(data_dir, "acme") == 30

    for refused in (["acme"], ["acme", "--days", "3", "--forever"], ["acme", "--days", "0"], ["nobody", "--days", "3"]):
        result = runner.invoke(app, ["tenants", "retention", *refused])
        assert result.exit_code == 2, (refused, result.output)
    assert "tenant 'nobody' not found" in runner.invoke(app, ["tenants", "retention", "nobody", "--days", "3"]).stderr
    assert _retention_of(data_dir, "acme") == 30

    assert runner.invoke(app, ["tenants", "retention", "acme", "--forever"]).exit_code == 0
    assert _retention_of(data_dir, "acme") is None
