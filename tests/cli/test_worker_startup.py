"""A worker that must not run refuses to start, in a real process: LETHE_REQUIRE_GPU=1 on a machine without CUDA
(this one) exits with EX_CONFIG and says why, whether started as `lethe worker`, as a plain Celery worker, or by
`lethe serve` beside the API; and `lethe serve`'s supervisor does not restart a worker that refused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli.embedded_worker import EX_CONFIG, EmbeddedWorker
from lethe.settings import Settings
from tests.conftest import free_port, wait_for
from worker import startup

REPO = Path(__file__).resolve().parents[2]
MESSAGE = "LETHE_REQUIRE_GPU=1 but CUDA is not available to this worker"

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def run_refused(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `command` in the embedded default with LETHE_REQUIRE_GPU=1; it must end by itself."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LETHE_REQUIRE_GPU": "1",
        "LETHE_DATA_DIR": str(tmp_path / "lethe-data"),
        "LETHE_DATABASE_URL": "",
        "LETHE_BROKER_URL": "",
        "LETHE_STORAGE_URL": "",
    }
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


@no_cuda
@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "cli.main", "worker"],
        [sys.executable, "-m", "celery", "-A", "worker.tasks", "worker", "--pool=solo", "--loglevel=INFO"],
    ],
    ids=["lethe-worker", "celery-worker"],
)
def test_a_worker_without_cuda_refuses_to_start_when_a_gpu_is_required(command: list[str], tmp_path: Path) -> None:
    finished = run_refused(command, tmp_path)
    assert finished.returncode == EX_CONFIG, finished.stderr
    assert MESSAGE in finished.stderr and "refusing to start rather than train on the CPU" in finished.stderr
    assert "ready." not in finished.stdout + finished.stderr  # Celery never started consuming


@no_cuda
def test_serve_refuses_to_start_its_worker_without_cuda_when_a_gpu_is_required(tmp_path: Path) -> None:
    finished = run_refused([sys.executable, "-m", "cli.main", "serve", "--port", str(free_port())], tmp_path)
    assert finished.returncode == EX_CONFIG, finished.stderr
    assert MESSAGE in finished.stderr
    assert "Uvicorn running" not in finished.stderr  # refused before serving


def test_a_worker_that_refused_to_start_is_not_restarted() -> None:
    worker = EmbeddedWorker([sys.executable, "-c", f"raise SystemExit({EX_CONFIG})"], poll_interval_s=0.05)
    worker.start()
    try:
        assert wait_for(lambda: worker.refused, 30), "the refusal was not seen"
        first = worker.process
        assert not wait_for(lambda: worker.process is not first, 1.5)  # no restart, even after the back-off
        assert worker.restarts == 0
    finally:
        worker.stop()


@no_cuda
def test_without_cuda_a_worker_starts_unless_a_gpu_is_required() -> None:
    assert startup.startup_problem(Settings(require_gpu=False)) is None
    problem = startup.startup_problem(Settings(require_gpu=True))
    assert problem is not None and problem.startswith(MESSAGE) and "CUDA" in problem


def test_a_bad_gpu_count_stops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_WORKER_GPUS", "none")
    assert startup.startup_problem(Settings()) == "LETHE_WORKER_GPUS='none' must be a whole number of GPUs, at least 1"
    with pytest.raises(SystemExit) as exited:
        startup.check_worker_devices(Settings())
    assert exited.value.code == EX_CONFIG


def test_a_bad_activation_budget_stops_the_worker_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_ACTIVATION_BUDGET_MB", "a lot")
    assert startup.startup_problem(Settings()) == "LETHE_ACTIVATION_BUDGET_MB='a lot' is not a number of megabytes"
    monkeypatch.setenv("LETHE_ACTIVATION_BUDGET_MB", "256")
    assert startup.startup_problem(Settings()) is None
