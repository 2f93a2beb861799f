"""`make faults`: small forget jobs on the full stack while the worker is SIGKILLed and Redis is restarted.

Runs on PostgreSQL (a database of its own on 127.0.0.1:5432), a Redis server of its own (started here on a free
port with persistence off, so a restart loses every message it held), an S3-protocol server (moto) on loopback,
`lethe serve` and `lethe worker` processes, and the tiny test LM. It submits the jobs, then SIGKILLs the worker
while a job is mid-training (and starts a new one), and restarts Redis, as often as asked; waits until every job
has ended or the deadline passes; then submits, for every job that ran more than once, the same request again and
lets it run undisturbed, and compares the two adapters' weights. It writes bench/faults.json:

- submitted, succeeded, failed (by error code), stuck (not ended by the deadline);
- duplicated_adapters: jobs with more than one adapter row, and adapter objects no row points at;
- resumed: each job that ran more than once, its attempts, and whether its adapter's weights
  (adapter_model.safetensors) hash the same as the undisturbed rerun's.

Target: all succeeded, 0 duplicates, 0 stuck, equal hashes. It is a script, not a test: its figures depend on the
machine's speed, and it takes minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
from minio import Minio
from moto.server import ThreadedMotoServer

from bench.machine import machine
from tests.tiny_lm import build_tiny_lm, synthetic_choice_rows, task_corpus

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("LETHE_FAULTS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
API_KEY = "lethe-faults-bootstrap-key-0123456789"
BUCKET = "lethe-faults"
S3_KEYS = ("faults-access", "faults-secret-key")

# Long enough to be caught mid-training on the tiny LM, short enough for 30 of them in minutes.
METHOD = {"name": "gradient_ascent", "params": {"epochs": 12, "batch_size": 2, "stop_at_target": False}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process in its own process group (so a kill takes its children too), logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self._log.closed:
            return
        if self.alive():
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class Redis:
    """A Redis server of our own, without persistence: a restart loses every queued message."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.restarts = 0
        self.process = self._start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> Process:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = Process(f"redis-{self.restarts}", args, dict(os.environ), self.log_dir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return process
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def restart(self) -> None:
        self.process.kill()
        self.restarts += 1
        self.process = self._start()

    def stop(self) -> None:
        self.process.kill()


def _database(stack: ExitStack) -> str:
    name = f"lethe_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _s3(stack: ExitStack) -> str:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stack.callback(server.stop)
    endpoint = f"127.0.0.1:{port}"
    Minio(endpoint, access_key=S3_KEYS[0], secret_key=S3_KEYS[1], secure=False).make_bucket(BUCKET)
    return endpoint


def _weights_sha256(archive: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name.endswith("adapter_model.safetensors"):
                extracted = tar.extractfile(member)
                assert extracted is not None
                return hashlib.sha256(extracted.read()).hexdigest()
    raise ValueError("no adapter_model.safetensors in the archive")


class Faults:
    def __init__(self, stack: ExitStack, work_dir: Path) -> None:
        self.stack, self.work_dir = stack, work_dir
        self.database_url = _database(stack)
        self.redis = Redis(work_dir)
        stack.callback(self.redis.stop)
        self.s3_endpoint = _s3(stack)
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "LETHE_PRECISION": os.environ.get("LETHE_PRECISION", "fp32"),
            "LETHE_DATA_DIR": str(work_dir / "data"),
            "LETHE_DATABASE_URL": self.database_url.replace("postgresql://", "postgresql+psycopg://", 1),
            "LETHE_BROKER_URL": self.redis.url,
            "LETHE_STORAGE_URL": f"s3://{BUCKET}",
            "LETHE_S3_ENDPOINT": self.s3_endpoint,
            "LETHE_S3_ACCESS_KEY": S3_KEYS[0],
            "LETHE_S3_SECRET_KEY": S3_KEYS[1],
            "LETHE_S3_SECURE": "false",
            "LETHE_BOOTSTRAP_API_KEY": API_KEY,
            # Short timeouts, so that a lost worker or message is noticed in seconds, not minutes.
            "LETHE_HEARTBEAT_INTERVAL_S": "1",
            "LETHE_HEARTBEAT_TIMEOUT_S": "5",
            "LETHE_REAPER_INTERVAL_S": "1",
            "LETHE_REDELIVER_AFTER_S": "10",
            "LETHE_STALL_TIMEOUT_S": "120",
            "LETHE_MAX_ATTEMPTS": "10",
            "LETHE_CHECKPOINT_EVERY_STEPS": "10",
            # The run submits its jobs at once: above a tenant's default write burst and active-job cap.
            "LETHE_RATE_LIMIT_BURST": "1000",
            "LETHE_MAX_ACTIVE_JOBS_PER_TENANT": "1000",
        }
        self.worker: Process | None = None
        self.workers_started = 0
        self.kills = 0
        self.killed: set[tuple[str, int]] = set()

    def lethe(self, name: str, *args: str) -> Process:
        process = Process(name, [sys.executable, "-m", "cli.main", *args], self.env, self.work_dir)
        self.stack.callback(process.stop)
        return process

    def start_worker(self) -> None:
        self.worker = self.lethe(f"worker-{self.workers_started}", "worker")
        self.workers_started += 1

    def start(self) -> httpx.Client:
        tiny_dir = build_tiny_lm(self.work_dir / "tiny-lm", task_corpus())
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=self.env, cwd=ROOT, check=True)
        subprocess.run(
            [sys.executable, "-m", "cli.main", "base-models", "add", "tiny-faults", str(tiny_dir)],
            env=self.env,
            cwd=ROOT,
            check=True,
        )
        port = free_port()
        self.lethe("serve", "serve", "--port", str(port))
        self.start_worker()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY}, timeout=30)
        self.stack.callback(client.close)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    return client
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"lethe did not become ready; logs in {self.work_dir}")

    def upload(self, client: httpx.Client, rows: list[dict[str, Any]], name: str) -> str:
        content = "".join(json.dumps(row) + "\n" for row in rows).encode()
        files = {"file": ("rows.jsonl", content)}
        response = client.post("/v1/datasets", files=files, data={"name": name, "kind": "choice"})
        response.raise_for_status()
        return str(response.json()["id"])

    def submit(self, client: httpx.Client, dataset_id: str, seed: int) -> tuple[str, dict[str, Any]]:
        body = {
            "base_model": "tiny-faults",
            "forget_dataset": dataset_id,
            "method": METHOD,
            "probe": False,
            "seed": seed,
        }
        response = client.post("/v1/forget-requests", json=body)
        response.raise_for_status()
        return str(response.json()["job_id"]), body

    def statuses(self, client: httpx.Client, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        return {job_id: client.get(f"/v1/jobs/{job_id}").json() for job_id in job_ids}

    def kill_worker_mid_training(self) -> bool:
        """SIGKILL the worker if it is mid-training: a job in its forgetting stage, between 15% and 85%, whose
        attempt was not killed before (a job stays `running` in the catalogue until the reaper notices). True if
        it did."""
        training = self.catalogue(
            "SELECT id::text, attempts, progress FROM jobs WHERE status = 'running' AND stage = 'forgetting' "
            "AND progress > 0.15 AND progress < 0.85"
        )
        # Each attempt once, and no job more than twice: the kills spread over several jobs (a resumed job is back
        # mid-training within seconds, and would otherwise take them all).
        killed_jobs = Counter(job_id for job_id, _ in self.killed)
        fresh = [row for row in training if (row[0], row[1]) not in self.killed and killed_jobs[row[0]] < 2]
        if not fresh or self.worker is None:
            return False
        job_id, attempt, progress = fresh[0]
        self.worker.kill()
        self.killed.add((job_id, attempt))
        self.kills += 1
        print(f"faults: SIGKILLed the worker during job {job_id}, attempt {attempt}, at {progress:.2f}")
        return True

    def catalogue(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as connection:
            return list(connection.execute(query).fetchall())

    def orphan_adapter_objects(self) -> int:
        keys = {row[0] for row in self.catalogue("SELECT object_key FROM adapters")}
        client = Minio(self.s3_endpoint, access_key=S3_KEYS[0], secret_key=S3_KEYS[1], secure=False)
        stored = {o.object_name for o in client.list_objects(BUCKET, recursive=True)}
        return len({key for key in stored if key.startswith("adapters/") and key not in keys})

    def checkpoint_objects_left(self) -> int:
        client = Minio(self.s3_endpoint, access_key=S3_KEYS[0], secret_key=S3_KEYS[1], secure=False)
        return sum(1 for o in client.list_objects(BUCKET, recursive=True) if o.object_name.startswith("checkpoints/"))

    def adapter_weights(self, client: httpx.Client, adapter_id: str) -> str:
        response = client.get(f"/v1/adapters/{adapter_id}/download")
        response.raise_for_status()
        return _weights_sha256(response.content)


def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the S3 server's access log
    started = time.monotonic()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lethe-faults-") as tmp:
        work_dir = Path(tmp)
        faults = Faults(stack, work_dir)
        client = faults.start()
        dataset_id = faults.upload(client, synthetic_choice_rows(32, seed=7), "faults")
        bodies: dict[str, dict[str, Any]] = {}
        for index in range(args.jobs):
            job_id, body = faults.submit(client, dataset_id, seed=index)
            bodies[job_id] = body
        job_ids = list(bodies)
        print(f"faults: submitted {len(job_ids)} jobs")

        # Spread the Redis restarts between the kills: after the 1st and 3rd kill (or on the clock).
        restart_after_kills = {1, 3} if args.redis_restarts == 2 else set(range(1, args.redis_restarts + 1))
        deadline = time.monotonic() + args.timeout_s
        jobs = faults.statuses(client, job_ids)
        while time.monotonic() < deadline:
            jobs = faults.statuses(client, job_ids)
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs.values()):
                break
            killed = faults.kills < args.kills and faults.kill_worker_mid_training()
            if killed and faults.kills in restart_after_kills and faults.redis.restarts < args.redis_restarts:
                # With no worker connected: every message Redis held (the queued jobs') is lost.
                faults.redis.restart()
                print(f"faults: restarted Redis ({faults.redis.restarts})")
            if faults.worker is not None and not faults.worker.alive():
                faults.start_worker()
            time.sleep(0.3)
        chaos_s = time.monotonic() - started

        ended = {"succeeded", "failed", "cancelled"}
        stuck = [job_id for job_id, job in jobs.items() if job["status"] not in ended]
        failed = Counter((job["error"] or {}).get("code", "?") for job in jobs.values() if job["status"] == "failed")
        attempts = dict(faults.catalogue("SELECT id::text, attempts FROM jobs WHERE kind = 'forget'"))
        duplicated = faults.catalogue("SELECT job_id FROM adapters GROUP BY job_id HAVING count(*) > 1")

        # Every job that ran more than once, against the same request run undisturbed.
        resumed = []
        for job_id in [j for j in job_ids if attempts.get(j, 0) > 1 and jobs[j]["status"] == "succeeded"]:
            rerun_id, _ = faults.submit(client, dataset_id, seed=bodies[job_id]["seed"])
            rerun_deadline = time.monotonic() + 300
            while client.get(f"/v1/jobs/{rerun_id}").json()["status"] not in ended:
                if time.monotonic() > rerun_deadline:
                    break
                time.sleep(0.5)
            rerun = client.get(f"/v1/jobs/{rerun_id}").json()
            entry: dict[str, Any] = {"job_id": job_id, "attempts": attempts[job_id], "rerun_job_id": rerun_id}
            if rerun["status"] == "succeeded":
                entry["weights_sha256"] = faults.adapter_weights(client, jobs[job_id]["adapter_id"])
                entry["rerun_weights_sha256"] = faults.adapter_weights(client, rerun["adapter_id"])
                entry["equal"] = entry["weights_sha256"] == entry["rerun_weights_sha256"]
                final = {(m["stage"], m["split"], m["name"], m["layer"]): m["value"] for m in jobs[job_id]["metrics"]}
                rerun_final = {(m["stage"], m["split"], m["name"], m["layer"]): m["value"] for m in rerun["metrics"]}
                entry["metrics_equal"] = final == rerun_final
            else:
                entry["equal"] = False
                entry["rerun_status"] = rerun["status"]
            resumed.append(entry)

        return {
            "machine": machine(),
            "jobs_submitted": len(job_ids),
            "succeeded": sum(job["status"] == "succeeded" for job in jobs.values()),
            "failed": sum(failed.values()),
            "failed_by_code": dict(failed),
            "stuck": len(stuck),
            "stuck_jobs": stuck,
            "duplicated_adapters": len(duplicated),
            "orphan_adapter_objects": faults.orphan_adapter_objects(),
            "checkpoint_objects_left": faults.checkpoint_objects_left(),
            "worker_sigkills": faults.kills,
            "redis_restarts": faults.redis.restarts,
            "workers_started": faults.workers_started,
            "jobs_run_more_than_once": len(resumed),
            "resumed": resumed,
            "resumed_equal": sum(bool(r.get("equal")) for r in resumed),
            "chaos_wall_s": round(chaos_s, 1),
            "total_wall_s": round(time.monotonic() - started, 1),
            "method": METHOD,
        }


def target_met(result: dict[str, Any]) -> bool:
    return (
        result["succeeded"] == result["jobs_submitted"]
        and result["duplicated_adapters"] == 0
        and result["orphan_adapter_objects"] == 0
        and result["stuck"] == 0
        and result["resumed_equal"] == result["jobs_run_more_than_once"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "faults.json")
    args = parser.parse_args()
    result = run(args)
    result["target_met"] = target_met(result)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("resumed", "machine", "stuck_jobs", "method")}
    print(json.dumps(summary, indent=2))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
