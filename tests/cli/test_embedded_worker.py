"""The embedded worker's supervision, with a stand-in child process (a sleeping Python) instead of Celery."""

import os
import sys
import time

from cli.embedded_worker import PARENT_VARIABLE, EmbeddedWorker
from tests.conftest import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_a_worker_that_exits_is_restarted_and_stop_ends_it() -> None:
    worker = EmbeddedWorker(SLEEPER, poll_interval_s=0.05)
    worker.start()
    try:
        first = worker.process
        assert first is not None and worker.alive()
        first.kill()
        assert wait_for(lambda: worker.process is not first and worker.alive(), 10), "the worker was not restarted"
        assert worker.restarts == 1
    finally:
        worker.stop()
    assert worker.process is not None and worker.process.poll() is not None
    assert not worker.alive()


def test_stop_kills_a_worker_that_ignores_sigterm(monkeypatch) -> None:
    monkeypatch.setattr("cli.embedded_worker.STOP_TIMEOUT_S", 0.5)
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ]
    worker = EmbeddedWorker(stubborn, poll_interval_s=0.05)
    worker.start()
    time.sleep(0.5)  # let it install its handler
    worker.stop()
    assert worker.process is not None and worker.process.returncode == -9
    assert worker.restarts == 0


def test_the_worker_is_told_its_parent() -> None:
    worker = EmbeddedWorker(
        [sys.executable, "-c", f"import os; assert os.environ['{PARENT_VARIABLE}'] == str(os.getppid())"]
    )
    worker.start()
    try:
        assert worker.process is not None and worker.process.wait(timeout=30) == 0
    finally:
        worker.stop()
    assert os.environ.get(PARENT_VARIABLE) is None  # the server's own environment is unchanged
