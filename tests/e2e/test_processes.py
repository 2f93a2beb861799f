"""`lethe serve`'s embedded worker never outlives the server: SIGTERM, SIGKILL, and a worker that dies; and a
SIGTERM ends the server while a client still follows an event stream."""

import os
import signal
import threading
import uuid
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from api.services.auth import authenticate
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobRepository
from tests.conftest import REDIS_DB, forget_job_spec, free_port, wait_for
from tests.e2e.conftest import BOOTSTRAP_KEY, Service, own_redis_db, wait_until_healthy


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


def test_sigterm_to_serve_closes_open_event_streams(
    tmp_path: Path, start_service, stack_env: dict[str, str], stack_settings: Settings
) -> None:
    """A job with no worker never ends, so neither does its event stream: a graceful shutdown still finishes."""
    port = free_port()
    env = {**own_redis_db(stack_env, REDIS_DB), "LETHE_BOOTSTRAP_API_KEY": BOOTSTRAP_KEY}
    service = start_service(["serve", "--port", str(port)], env)  # and no worker
    base_url = f"http://127.0.0.1:{port}"
    wait_until_healthy(base_url, service)
    with session_scope(stack_settings.database_url) as session:
        tenant_id = authenticate(session, BOOTSTRAP_KEY).tenant_id
        job_id = JobRepository(session).create_queued(tenant_id, forget_job_spec(uuid.uuid4())).id
    opened, ended = threading.Event(), threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=None) as client:
            try:
                with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
                    for _event in source.iter_sse():
                        opened.set()
            except httpx.HTTPError:
                pass  # the server closed the stream: what a client resumes from with Last-Event-ID
        ended.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert opened.wait(30), service.log()  # the `queued` event came: the stream is open
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=30) == 128 + signal.SIGTERM, service.log()
    assert ended.wait(10)
