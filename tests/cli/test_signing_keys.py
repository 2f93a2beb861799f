"""`lethe signing-keys rotate | list` on the embedded default (SQLite catalogue, key directory under the data dir)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.signing_keys import app
from lethe.settings import get_settings


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LETHE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def test_rotate_makes_a_new_current_key_and_keeps_the_old_one_listed(data_dir: Path) -> None:
    runner = CliRunner()
    assert "no signing keys yet" in runner.invoke(app, ["list"]).output
    first = runner.invoke(app, ["rotate"])
    assert first.exit_code == 0, first.output
    assert first.output.endswith("retired: none\n")
    second = runner.invoke(app, ["rotate"])
    assert second.exit_code == 0, second.output
    [first_id, second_id] = [result.output.split()[3] for result in (first, second)]
    assert second.output.endswith(f"retired: {first_id}\n")
    listed = runner.invoke(app, ["list"]).output.splitlines()
    assert [line.split()[0] for line in listed] == [first_id, second_id]
    assert listed[1].endswith("current") and not listed[0].endswith("current")
    key_files = sorted(path.name for path in (data_dir / "signing_keys").iterdir())
    assert key_files == sorted([f"{first_id}.pem", f"{second_id}.pem"])
