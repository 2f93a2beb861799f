"""One forget job and one audit through Lethe's whole pipeline on CUDA, as scripts/gpu_check.sh runs them.

    python -m bench.gpu_pipeline [--out bench/results-gpu-pipeline.json]

The embedded default (`lethe serve`: SQLite catalogue, file object store, the worker beside the API; no Postgres,
Redis or S3, which the GPU host does not have) with LETHE_REQUIRE_GPU=1, so a worker that finds no CUDA refuses to
start instead of training on the CPU. The base model is a random-init SmolLM2-135M (bench/configs, bench/random_lm)
registered as a local checkpoint the way an admin would (`lethe base-models add`); the data are uploaded over HTTP;
one forget request (gradient ascent, with an audit: every attack that applies, default params) is followed to its
end, then its audit. Writes what the jobs reported (status, stage timings, the device and precision fields the
worker records, the audit's verdict) to `--out`, and exits 1 unless both jobs succeeded.

`--allow-cpu`: the same run on the CPU with a tiny shape and LETHE_REQUIRE_GPU unset (scripts/gpu_check.sh's dry
run); the result says `"dry_run": true`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.random_lm import build_random_lm, choice_rows

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
BASE_MODEL = "smollm2-135m-random"


def _log(message: str) -> None:
    print(f"gpu_pipeline: {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps({"prompt": r.prompt, "choices": list(r.choices), "answer": r.answer}) + "\n"
                            for r in rows))  # fmt: skip
    return path


def _wait_healthy(client: httpx.Client, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"lethe serve exited with {server.returncode} before answering")
        try:
            if client.get("/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"lethe serve did not answer /healthz within {timeout_s:.0f} s")


def _follow(client: httpx.Client, job_id: str, timeout_s: float) -> dict:
    """Poll the job until it ends, printing each change of status or stage."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        line = f"job {job_id}: {job['status']} {job['stage']} {job['progress'] * 100:.0f}%"
        if line != last:
            _log(line)
            last = line
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise RuntimeError(f"job {job_id} did not end within {timeout_s:.0f} s")


def _recorded_device(job: dict) -> dict:
    """The fields of a job that say where and how it ran (named device/precision/gpu by the worker)."""
    return {k: v for k, v in job.items() if any(word in k for word in ("device", "precision", "gpu"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow-cpu", action="store_true", help="dry run on the CPU: tiny shape, no GPU required")
    parser.add_argument("--forget-rows", type=int, default=48)
    parser.add_argument("--retain-rows", type=int, default=24)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for each job")
    parser.add_argument("--out", type=Path, default=BENCH / "results-gpu-pipeline.json")
    args = parser.parse_args()
    # gpu_check.sh's `timeout` sends SIGTERM: exit through the `finally` below, which stops `lethe serve`.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        _log("no CUDA device: not run (--allow-cpu for a dry run)")
        return 2
    dry_run = not cuda

    with tempfile.TemporaryDirectory(prefix="lethe-gpu-pipeline-") as scratch:
        data_dir = Path(scratch) / "data"
        key = "lethe_gpu_check_" + secrets.token_urlsafe(24)
        env = {**os.environ, "LETHE_DATA_DIR": str(data_dir), "LETHE_BOOTSTRAP_API_KEY": key}
        for name in ("LETHE_DATABASE_URL", "LETHE_BROKER_URL", "LETHE_STORAGE_URL", "LETHE_PRECISION"):
            env.pop(name, None)  # the embedded default, and the precision the hardware calls for
        if cuda:
            env["LETHE_REQUIRE_GPU"] = "1"
        else:
            env.pop("LETHE_REQUIRE_GPU", None)

        model_dir = build_random_lm("smollm2-135m", Path(scratch) / BASE_MODEL, tiny=dry_run)
        _log(f"random-init SmolLM2-135M{' (tiny shape)' if dry_run else ''} in {model_dir}")
        subprocess.run(
            [sys.executable, "-m", "cli.main", "base-models", "add", BASE_MODEL, str(model_dir)],
            env=env, cwd=REPO, check=True,
        )  # fmt: skip
        forget = _jsonl(Path(scratch) / "forget.jsonl", choice_rows(args.forget_rows, 12, seed=1))
        retain = _jsonl(Path(scratch) / "retain.jsonl", choice_rows(args.retain_rows, 12, seed=2))

        port = _free_port()
        log_path = Path(scratch) / "serve.log"
        _log(f"lethe serve on 127.0.0.1:{port} (embedded, LETHE_REQUIRE_GPU={env.get('LETHE_REQUIRE_GPU', 'unset')})")
        started = time.monotonic()
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        result: dict[str, Any] = {"dry_run": dry_run, "cuda": cuda, "base_model": BASE_MODEL}
        try:
            headers = {"X-API-Key": key}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
                _wait_healthy(client, server, 120)
                ids = {}
                for name, path in (("forget", forget), ("retain", retain)):
                    with path.open("rb") as handle:
                        response = client.post(
                            "/v1/datasets", files={"file": (path.name, handle)}, data={"name": name, "kind": "choice"}
                        )
                    ids[name] = response.raise_for_status().json()["id"]
                body = {
                    "base_model": BASE_MODEL,
                    "forget_dataset": ids["forget"],
                    "retain_datasets": [ids["retain"]],
                    "heldout_fraction": 0.25,
                    "method": {"name": "gradient_ascent", "params": {"epochs": 2, "batch_size": 8}},
                    "probe": True,
                    "general_text_perplexity": False,
                    "audit": {},  # every attack that applies, default params and thresholds
                    "seed": 0,
                }
                job_id = client.post("/v1/forget-requests", json=body).raise_for_status().json()["job_id"]
                job = _follow(client, job_id, args.timeout)
                result["forget_job"] = {
                    "status": job["status"],
                    "error": job.get("error"),
                    **_recorded_device(job),
                }
                if job["status"] == "succeeded":
                    audit_id = job["audit_ids"][0]
                    audit_job = _follow(client, client.get(f"/v1/audits/{audit_id}").json()["job_id"], args.timeout)
                    audit = client.get(f"/v1/audits/{audit_id}").json()
                    result["audit_job"] = {
                        "status": audit_job["status"],
                        "error": audit_job.get("error"),
                        "verdict": audit.get("verdict"),
                        "attacks": [r["attack"] for r in audit.get("results", [])],
                        **_recorded_device(audit_job),
                    }
        except (RuntimeError, httpx.HTTPError) as exc:
            result["error"] = str(exc)
        except SystemExit as exc:  # SIGTERM from the step's timeout: still write what was seen
            result["error"] = f"stopped by signal (exit {exc.code}) before both jobs ended"
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        result["seconds"] = time.monotonic() - started
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        ok = result.get("forget_job", {}).get("status") == "succeeded" and (
            result.get("audit_job", {}).get("status") == "succeeded"
        )
        if not ok:
            print("\n".join(tail), file=sys.stderr)
        result["ok"] = ok
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _log(f"{'ok' if ok else 'FAILED'}: {json.dumps(result)}")
    _log(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
