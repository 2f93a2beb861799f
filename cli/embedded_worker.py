"""The worker that `lethe serve` runs beside the API in the embedded default: started, supervised, stopped.

It must never outlive the server: an orphan keeps gigabytes and a core, and a restarted `serve` would then run
two workers on one data dir. Three layers see to it:
- `stop()` from the server's shutdown: SIGTERM (Celery's warm shutdown), SIGKILL after `STOP_TIMEOUT_S`;
- the worker asks the kernel to SIGKILL it when its parent dies (`die_with_parent`, Linux `PR_SET_PDEATHSIG`),
  which covers a server that is SIGKILLed or crashes and never runs its shutdown;
- a supervisor thread restarts a worker that exits on its own, with back-off, so jobs never wait on a dead one;
  except a worker that refused to start for its configuration (`EX_CONFIG`, e.g. LETHE_REQUIRE_GPU=1 without
  CUDA): it would refuse again every time, so the supervisor logs it and stops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("lethe.serve")

# The worker's environment names the server it belongs to; see `die_with_parent`.
PARENT_VARIABLE = "LETHE_EMBEDDED_PARENT_PID"
STOP_TIMEOUT_S = 30.0
# Back-off between restarts of a worker that keeps exiting: 1 s, doubling, at most a minute; a worker that ran
# for longer than the longest wait counts as healthy again.
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 60.0
# The exit status of a worker that refuses to start for its configuration (sysexits.h EX_CONFIG, as
# worker/startup.py exits): never restarted.
EX_CONFIG = 78
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a worker started by `EmbeddedWorker`: be SIGKILLed by the kernel when the server process dies.

    A no-op elsewhere (no PARENT_VARIABLE, or not Linux). The death signal fires when the *thread* that started
    the worker ends, so `EmbeddedWorker` starts workers only from threads that live until it stops them.
    """
    parent = os.environ.get(PARENT_VARIABLE)
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(parent):  # the server died before the request above was in place
        os._exit(1)


class EmbeddedWorker:
    """One `lethe worker` child process, restarted with back-off when it exits on its own."""

    def __init__(self, command: list[str], poll_interval_s: float = 0.5) -> None:
        self.command = command
        self.poll_interval_s = poll_interval_s
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        # Whether the worker exited with EX_CONFIG, after which it is not restarted.
        self.refused = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, name="embedded-worker", daemon=True)

    def start(self) -> None:
        """Start the worker and its supervisor (from the main thread, which lives as long as the server)."""
        self._spawn()
        self._supervisor.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            env = {**os.environ, PARENT_VARIABLE: str(os.getpid())}
            self.process = subprocess.Popen(self.command, env=env)
            log.info("embedded worker started (pid %d)", self.process.pid)

    def _supervise(self) -> None:
        backoff = FIRST_BACKOFF_S
        started = time.monotonic()
        while not self._stopping.wait(self.poll_interval_s):
            process = self.process
            if process is None or process.poll() is None:
                continue
            if process.returncode == EX_CONFIG:
                log.error("embedded worker refused to start (its reason is above); not restarted")
                self.refused = True
                return
            if time.monotonic() - started > MAX_BACKOFF_S:
                backoff = FIRST_BACKOFF_S
            log.error("embedded worker exited with %s; restarting in %.0f s", process.returncode, backoff)
            if self._stopping.wait(backoff):
                return
            self._spawn()
            self.restarts += 1
            started = time.monotonic()
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def alive(self) -> bool:
        """Whether the worker process is running now."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the worker (SIGTERM, SIGKILL if it is still there after STOP_TIMEOUT_S), then its supervisor.

        In that order: a worker the supervisor restarted dies with the supervisor's thread (see `die_with_parent`),
        so the thread must outlive the worker's warm shutdown.
        """
        with self._lock:
            self._stopping.set()  # no restart from here on
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._supervisor.is_alive():
            self._supervisor.join()
