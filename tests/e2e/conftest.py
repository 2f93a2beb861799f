"""Processes of a running Lethe: `lethe serve` (uvicorn) and `lethe worker` (Celery), started for real."""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeDriverService

from tests.conftest import free_port
from tests.tiny_lm import build_tiny_lm, task_corpus

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP_KEY = "lethe-e2e-bootstrap-key-0123456789"


class Service:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args], env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


StartService = Callable[[list[str], dict[str, str]], Service]


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    started: list[Service] = []

    def start(args: list[str], env: dict[str, str]) -> Service:
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        service = Service(args, full_env, tmp_path / f"{args[0]}-{len(started)}.log")
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()


def wait_until_healthy(base_url: str, service: Service, timeout_s: float = 120, path: str = "/healthz") -> None:
    """Until `path` answers 200 (`/readyz`: also a worker has beaten); the service must not exit meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise AssertionError(f"service exited early:\n{service.log()}")
        try:
            if httpx.get(f"{base_url}{path}", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{base_url}{path} not 200 after {timeout_s}s:\n{service.log()}")


def wait_for_job(client: httpx.Client, job_id: str, services: list[Service], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        for service in services:
            if service.process.poll() is not None:
                raise AssertionError(f"a service exited while the job ran:\n{service.log()}")
        time.sleep(1)
    logs = "\n".join(s.log() for s in services)
    raise AssertionError(f"job {job_id} still {job['status']}/{job['stage']} after {timeout_s}s:\n{logs}")


def watch_job(
    client: httpx.Client, job_id: str, services: list[Service], timeout_s: float
) -> tuple[list[ServerSentEvent], dict]:
    """Follow the job's event stream (SSE) to its end, as a watching client does; its events, and the job as
    `GET /v1/jobs/{id}` then shows it. Past `timeout_s` the services are stopped, which ends the stream, and the test
    fails with their logs."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        for service in services:
            service.process.terminate()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    try:
        with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
            assert source.response.status_code == 200, source.response.read()
            events = list(source.iter_sse())
    except httpx.HTTPError as exc:
        logs = "\n".join(s.log() for s in services)
        raise AssertionError(f"the event stream of job {job_id} broke ({exc!r}):\n{logs}") from exc
    finally:
        timer.cancel()
    assert not expired.is_set(), f"job {job_id} still running after {timeout_s}s:\n" + "\n".join(
        s.log() for s in services
    )
    return events, client.get(f"/v1/jobs/{job_id}").json()


def start_lethe(
    tmp_path: Path,
    env: dict[str, str],
    start_service: Callable[[list[str], dict[str, str]], Service],
    with_worker: bool,
) -> tuple[str, list[Service], Path]:
    """Register a tiny base LM `tiny-e2e`, start `lethe serve` (and `lethe worker`); (base URL, services, LM dir)."""
    tiny_dir = build_tiny_lm(tmp_path / "tiny-lm", task_corpus())
    # The relay on a short clock (a test's env may set its own): a worker's wake-up claims the fairest queued job,
    # which may be one an earlier test left in the shared catalogue, and the relay then sends this test's job again.
    relay = {"LETHE_REAPER_INTERVAL_S": "2", "LETHE_REDELIVER_AFTER_S": "20"}
    env = {**relay, **env, "LETHE_BOOTSTRAP_API_KEY": BOOTSTRAP_KEY, "LETHE_HEARTBEAT_INTERVAL_S": "1"}
    subprocess.run(
        [sys.executable, "-m", "cli.main", "base-models", "add", "tiny-e2e", str(tiny_dir)],
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
    )
    port = free_port()
    services = [start_service(["serve", "--port", str(port)], env)]
    if with_worker:
        services.append(start_service(["worker"], env))
    base_url = f"http://127.0.0.1:{port}"
    wait_until_healthy(base_url, services[0], path="/readyz")
    return base_url, services, tiny_dir


def upload_rows(client: httpx.Client, rows: list[dict], name: str, kind: str = "choice") -> str:
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = client.post("/v1/datasets", files={"file": ("rows.jsonl", content)}, data={"name": name, "kind": kind})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def own_redis_db(stack_env: dict[str, str], db: int) -> dict[str, str]:
    """The stack env with a Redis database of its own, so a worker never sees another test's jobs."""
    return {**stack_env, "LETHE_BROKER_URL": stack_env["LETHE_BROKER_URL"].rsplit("/", 1)[0] + f"/{db}"}


@pytest.fixture(scope="session")
def smollm2_cache_dir() -> Path:
    """Where the bundled SmolLM2 is converted to safetensors once (kept between runs, outside the tree)."""
    directory = Path(os.environ.get("LETHE_TEST_CACHE", Path.home() / ".cache" / "lethe-tests")) / "base_models"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# The audit report's page in a real browser: Debian's headless Chromium, driven through its chromedriver.
# scripts/ensure_tools.sh (run by `make test`) installs both packages. Selenium gets the driver's path, so Selenium
# Manager never runs (it would download a driver), and Chromium runs with its background networking off (otherwise
# it keeps dialling Google's services on a network that has none).
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1100,900",
]

# Every image of the page, once decoded: Image.decode() rejects for an image the browser could not load or decode.
IMAGES_SCRIPT = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
Promise.allSettled(images.map((image) => image.decode())).then((decoded) => done(images.map((image, i) => ({
  alt: image.alt, complete: image.complete, naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight,
  decoded: decoded[i].status === "fulfilled",
}))));
"""


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert binary.is_file(), f"{binary} is missing: run scripts/ensure_tools.sh as root (Debian's chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = ChromeDriverService(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
