"""`lethe base-models add` with a hub source, against a loopback hub, on the embedded catalogue."""

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.base_model_sources import directory_weights_sha256
from tests.hub_server import LoopbackHub, files_of
from tests.tiny_lm import build_tiny_lm, task_corpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[LoopbackHub, Path]]:
    tiny = build_tiny_lm(tmp_path / "tiny", task_corpus())
    server = LoopbackHub().start()
    server.add("lethe-test/tiny-cli").commit({**files_of(tiny), "pytorch_model.bin": b"pickled"})
    yield server, tiny
    server.stop()


def _add(tmp_path: Path, hub: LoopbackHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LETHE_DATA_DIR": str(tmp_path / "data"), "LETHE_HF_ENDPOINT": hub.url}
    for name in ("LETHE_DATABASE_URL", "LETHE_STORAGE_URL", "LETHE_BROKER_URL", "LETHE_HF_OFFLINE"):
        env.pop(name, None)
    command = [sys.executable, "-m", "cli.main", "base-models", "add", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)


def test_a_hub_source_is_registered_pinned_with_its_digest(hub: tuple[LoopbackHub, Path], tmp_path: Path) -> None:
    server, tiny = hub
    done = _add(tmp_path, server, "tiny-cli", "hf:lethe-test/tiny-cli@main", "--description", "from the hub")
    assert done.returncode == 0, done.stderr
    commit = server.repos["lethe-test/tiny-cli"].refs["main"]
    digest = directory_weights_sha256(tiny, ["model.safetensors"])
    assert f"-> hf:lethe-test/tiny-cli@{commit} (weights sha256 {digest})" in done.stdout
    with sqlite3.connect(tmp_path / "data" / "lethe.db") as catalogue:
        row = catalogue.execute(
            "SELECT source, revision, requested_revision, weights_sha256, n_layers FROM base_models WHERE name = ?",
            ("tiny-cli",),
        ).fetchone()
    assert row == (f"hf:lethe-test/tiny-cli@{commit}", commit, "main", digest, 2)


def test_a_bad_source_is_refused_with_its_reason(hub: tuple[LoopbackHub, Path], tmp_path: Path) -> None:
    server, _tiny = hub
    done = _add(tmp_path, server, "nope", "hf:lethe-test/missing@main")
    assert done.returncode == 2
    assert "repository 'lethe-test/missing' not found on the hub" in done.stderr
    with sqlite3.connect(tmp_path / "data" / "lethe.db") as catalogue:
        assert catalogue.execute("SELECT count(*) FROM base_models WHERE name = 'nope'").fetchone() == (0,)
