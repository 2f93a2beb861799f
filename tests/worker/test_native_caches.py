"""The CPU matmul library's caches in a worker (worker/native_caches.py): bounded where the environment says
nothing, an operator's values kept, a bad value refused at start-up with its name, and the worker's start-up writing
the bound into its own environment (where oneDNN and ideep read it at their first matmul)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.embedded_worker import EX_CONFIG
from lethe.settings import Settings
from worker import startup
from worker.native_caches import (
    NATIVE_CACHE_VARIABLES,
    WORKER_CAPACITY,
    bound_native_caches,
    native_cache_settings,
)

ONEDNN, IDEEP = NATIVE_CACHE_VARIABLES
REPO = Path(__file__).resolve().parents[2]


def test_unset_or_empty_capacities_are_bounded_and_the_rest_of_the_environment_is_left() -> None:
    environ = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": " ", "X": "1"}
    assert bound_native_caches(environ) == {ONEDNN: str(WORKER_CAPACITY), IDEEP: str(WORKER_CAPACITY)}
    assert environ == {ONEDNN: str(WORKER_CAPACITY), IDEEP: str(WORKER_CAPACITY), "X": "1"}


def test_an_operators_capacities_win() -> None:
    environ = {ONEDNN: "0", IDEEP: "1024"}
    assert bound_native_caches(environ) == {ONEDNN: "0", IDEEP: "1024"}
    assert environ == {ONEDNN: "0", IDEEP: "1024"}


@pytest.mark.parametrize(
    ("variable", "value", "least"),
    [(IDEEP, "0", 1), (ONEDNN, "-1", 0), (IDEEP, "many", 1), (ONEDNN, "6.5", 0)],
)
def test_a_bad_capacity_is_refused_naming_the_variable_and_nothing_is_written(
    variable: str, value: str, least: int
) -> None:
    environ = {variable: value}
    with pytest.raises(ValueError) as refused:
        bound_native_caches(environ)
    assert str(refused.value) == f"{variable}={value!r} is not a whole number of cache entries of at least {least}"
    assert environ == {variable: value}
    assert native_cache_settings({}) == {ONEDNN: str(WORKER_CAPACITY), IDEEP: str(WORKER_CAPACITY)}


def test_a_bad_capacity_stops_the_worker_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IDEEP, "0")
    assert startup.startup_problem(Settings()) == (f"{IDEEP}='0' is not a whole number of cache entries of at least 1")
    with pytest.raises(SystemExit) as exited:
        startup.check_worker_devices(Settings())
    assert exited.value.code == startup.EX_CONFIG


def test_the_worker_start_up_bounds_its_own_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ONEDNN, raising=False)
    monkeypatch.setenv(IDEEP, "128")  # restored with the other after the test
    startup.check_worker_devices(Settings(require_gpu=False))
    assert os.environ[ONEDNN] == str(WORKER_CAPACITY)
    assert os.environ[IDEEP] == "128"


def test_lethe_worker_refuses_to_start_with_a_capacity_that_would_crash_it(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        IDEEP: "0",
        "LETHE_DATA_DIR": str(tmp_path / "lethe-data"),
        "LETHE_DATABASE_URL": "",
        "LETHE_BROKER_URL": "",
        "LETHE_STORAGE_URL": "",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert finished.returncode == EX_CONFIG, finished.stderr
    assert f"lethe worker: {IDEEP}='0' is not a whole number of cache entries of at least 1" in finished.stderr
