"""`lethe serve`'s embedded worker never outlives the server: SIGTERM, SIGKILL, and a worker that dies."""

import os
import signal
from pathlib import Path

from tests.conftest import free_port, wait_for
from tests.e2e.conftest import Service, wait_until_healthy


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left to collect


def serve_embedded(tmp_path: Path, start_service) -> tuple[Service, int]:
    env = {
        "LETHE_DATA_DIR": str(tmp_path / "lethe-data"),
        "LETHE_DATABASE_URL": "",
        "LETHE_BROKER_URL": "",
        "LETHE_STORAGE_URL": "",
    }
    port = free_port()
    service = start_service(["serve", "--port", str(port)], env)
    wait_until_healthy(f"http://127.0.0.1:{port}", service)
    assert wait_for(lambda: len(children(service.process.pid)) == 1, 30), service.log()
    [worker] = children(service.process.pid)
    return service, worker


def test_sigterm_to_serve_stops_its_worker(tmp_path: Path, start_service) -> None:
    service, worker = serve_embedded(tmp_path, start_service)
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=60) == 128 + signal.SIGTERM
    assert not alive(worker), f"worker {worker} outlived `lethe serve`:\n{service.log()}"


def test_a_dead_worker_is_restarted_and_a_killed_serve_takes_its_worker_along(tmp_path: Path, start_service) -> None:
    service, worker = serve_embedded(tmp_path, start_service)
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: children(service.process.pid) - {worker}, 30), service.log()
    [restarted] = children(service.process.pid) - {worker}
    assert "embedded worker exited with -9; restarting" in service.log()
    # A server that never runs its shutdown (SIGKILL): the kernel ends the worker (PR_SET_PDEATHSIG).
    service.process.kill()
    service.process.wait(timeout=30)
    assert wait_for(lambda: not alive(restarted), 10), f"worker {restarted} outlived a killed `lethe serve`"
