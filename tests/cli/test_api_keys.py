"""`lethe api-keys create|list|revoke|rotate` on the embedded catalogue: in process through typer's runner, and once
through `lethe`'s entry point."""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from api.errors import Unauthorized
from api.services.auth import authenticate
from cli.api_keys import app
from lethe.settings import get_settings
from models.db import session_scope

ROOT = Path(__file__).resolve().parents[2]
Lethe = Callable[..., Result]


@pytest.fixture
def lethe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lethe]:
    """`lethe api-keys ...` on a fresh embedded catalogue under tmp_path/data."""
    monkeypatch.setenv("LETHE_DATA_DIR", str(tmp_path / "data"))
    for name in ("LETHE_DATABASE_URL", "LETHE_STORAGE_URL", "LETHE_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(app, list(args))
    get_settings.cache_clear()


def _scopes_of(data_dir: Path, key: str) -> frozenset[str] | None:
    """The scopes the API would grant `key` (the gate's own check on the catalogue), None if it refuses it."""
    with session_scope(f"sqlite:///{data_dir / 'lethe.db'}") as session:
        try:
            return authenticate(session, key).scopes
        except Unauthorized:
            return None


def _listed(lethe: Lethe, *args: str) -> list[dict[str, Any]]:
    done = lethe("list", "--json", *args)
    assert done.exit_code == 0, done.output
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_lethe_api_keys_reaches_the_command(tmp_path: Path) -> None:
    env = {**os.environ, "LETHE_DATA_DIR": str(tmp_path / "data")}
    for name in ("LETHE_DATABASE_URL", "LETHE_STORAGE_URL", "LETHE_BROKER_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "cli.main", "api-keys", "create", "--tenant", "acme", "--scope", "read"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _scopes_of(tmp_path / "data", done.stdout.strip()) == {"read"}
    refused = subprocess.run([*command[:4], "revoke", "nope"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("Usage: lethe api-keys revoke [OPTIONS]")
    assert "Invalid value for 'KEY_ID'" in refused.stderr


def test_create_list_rotate_revoke(lethe: Lethe, tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Today's command keeps its meaning: a key for tenant `default` that reads and submits, alone on stdout.
    default = lethe("create")
    assert default.exit_code == 0, default.output
    default_key = default.stdout.strip()
    assert default_key.startswith("lethe_") and default.stdout == default_key + "\n"
    assert _scopes_of(data, default_key) == {"read", "submit"}

    made = lethe("create", "--tenant", "acme", "--scope", "read", "--scope", "admin", "--name", "ops")
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert _scopes_of(data, key) == {"read", "admin"}
    [listed] = _listed(lethe, "--tenant", "acme")
    assert (listed["tenant"], listed["scopes"], listed["name"], listed["prefix"]) == (
        "acme",
        ["admin", "read"],
        "ops",
        key[:12],
    )
    assert key not in json.dumps(listed) and "key_hash" not in listed

    rotated = lethe("rotate", listed["id"], "--grace-s", "600")
    assert rotated.exit_code == 0, rotated.output
    new_key = rotated.stdout.strip()
    assert f"key {listed['id']} replaced by" in rotated.stderr and "keeps working for 600 s" in rotated.stderr
    assert _scopes_of(data, new_key) == _scopes_of(data, key) == {"read", "admin"}  # the old one, within its grace

    [new] = [k for k in _listed(lethe, "--tenant", "acme") if k["id"] != listed["id"]]
    revoked = lethe("revoke", new["id"])
    assert revoked.exit_code == 0 and f"revoked key {new['id']}" in revoked.stdout
    assert _scopes_of(data, new_key) is None
    assert [k["id"] for k in _listed(lethe, "--tenant", "acme")] == [listed["id"]]  # active ones only by default
    assert {k["status"] for k in _listed(lethe, "--tenant", "acme", "--all")} == {"active", "revoked"}

    table = lethe("list")
    assert table.exit_code == 0 and listed["id"] in table.stdout and "default" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "--scope", "write"), "scopes: unknown 'write'; allowed are read, submit, admin"),
        (("create", "--tenant", "no spaces"), "tenant: 'no spaces' is not a tenant name"),
        (("revoke", "00000000-0000-0000-0000-000000000000"), "api key 00000000-0000-0000-0000-000000000000: not found"),
        (("rotate", str(uuid.UUID(int=1)), "--grace-s", "-1"), "grace_s: must be between 0 and 2592000"),
    ],
)
def test_a_refused_command_exits_2_with_its_reason(lethe: Lethe, args: tuple[str, ...], message: str) -> None:
    done = lethe(*args)
    assert done.exit_code == 2 and done.stdout == ""
    assert message in done.stderr, done.stderr
