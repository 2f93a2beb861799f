"""Real services for the suite: PostgreSQL, Redis, an S3-protocol server (moto) on loopback, migrations."""

import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from minio import Minio
from moto.server import ThreadedMotoServer

from lethe.settings import Settings
from lethe.specs import ForgetJobSpec, MethodChoice
from models.migrate import upgrade

# The tiny-LM scenarios must not follow this CPU's bf16 support (LETHE_PRECISION=auto would): fp32 unless the
# run asks for a precision. Set in the environment, so the Celery workers the e2e tests start inherit it; the
# audit tests run under fp32 and bf16 both (tests/engine/audit/conftest.py).
os.environ.setdefault("LETHE_PRECISION", "fp32")

POSTGRES_ADMIN_URL = os.environ.get("LETHE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# A Redis database of its own, so a test run never reads another program's keys (another number lets two runs
# share one server).
REDIS_DB = int(os.environ.get("LETHE_TEST_REDIS_DB", "11"))
S3_ACCESS_KEY, S3_SECRET_KEY, BUCKET = "lethe-test-access", "lethe-test-secret-key", "lethe-test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run on CUDA: skipped where torch sees none (torch is imported only if one is collected)."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="runs on CUDA; torch.cuda.is_available() is false here")
    for item in marked:
        item.add_marker(skip)


def forget_job_spec(forget_dataset: uuid.UUID, retain_datasets: list[uuid.UUID] | None = None) -> ForgetJobSpec:
    """A valid spec of a forget job on the registered test base model (random_label, no fine-tune, no probe)."""
    return ForgetJobSpec(
        base_model="tiny-registered",
        base_model_source="path:/nonexistent/tiny",
        forget_dataset=forget_dataset,
        retain_datasets=retain_datasets or [],
        heldout_fraction=0.2,
        finetune=None,
        method=MethodChoice(name="random_label", params={}),
        probe=False,
        general_text_perplexity=False,
        seed=0,
    )


def wait_for(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Whether `condition()` became true within `timeout_s` (polled every `interval_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    name = f"lethe_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    from models.db import get_engine

    get_engine(f"{base}/{name}").dispose()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = f"{REDIS_URL}/{REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a loopback port, with the test bucket created through the minio SDK."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"127.0.0.1:{port}"
    client = Minio(endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)
    client.make_bucket(BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def stack_env(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str, s3_endpoint: str
) -> dict[str, str]:
    """LETHE_* variables of the full stack (Postgres, Redis, S3) for this session's services."""
    return {
        "LETHE_DATA_DIR": str(tmp_path_factory.mktemp("lethe-data")),
        "LETHE_DATABASE_URL": postgres_url,
        "LETHE_BROKER_URL": redis_url,
        "LETHE_STORAGE_URL": f"s3://{BUCKET}",
        "LETHE_S3_ENDPOINT": s3_endpoint,
        "LETHE_S3_ACCESS_KEY": S3_ACCESS_KEY,
        "LETHE_S3_SECRET_KEY": S3_SECRET_KEY,
        "LETHE_S3_SECURE": "false",
    }


@pytest.fixture(scope="session")
def stack_settings(stack_env: dict[str, str]) -> Settings:
    settings = Settings(
        data_dir=Path(stack_env["LETHE_DATA_DIR"]),
        database_url=stack_env["LETHE_DATABASE_URL"],
        broker_url=stack_env["LETHE_BROKER_URL"],
        storage_url=stack_env["LETHE_STORAGE_URL"],
        s3_endpoint=stack_env["LETHE_S3_ENDPOINT"],
        s3_access_key=stack_env["LETHE_S3_ACCESS_KEY"],
        s3_secret_key=stack_env["LETHE_S3_SECRET_KEY"],  # type: ignore[arg-type]
        s3_secure=False,
    )
    upgrade(settings.database_url)
    return settings


def lethe_processes() -> set[int]:
    """Live `lethe` processes (`python -m cli.main ...`) running in this checkout (Linux /proc)."""
    root = str(Path(__file__).resolve().parents[1])
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if b"cli.main" in command and cwd == root and state != "Z":
            found.add(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """The suite fails if a `lethe serve` or `lethe worker` it started outlives it (a leaked worker keeps
    gigabytes and a core); the leaked processes are killed, so the next run starts clean."""
    before = lethe_processes()
    yield
    deadline = time.monotonic() + 15
    while (leaked := lethe_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes left running by the tests (now killed): {sorted(leaked)}"
