"""The `lethe` client commands against the stack (uvicorn + a Celery worker, Postgres, Redis, the S3 server), run
as a user runs them: subprocesses, and one forget request watched in a real terminal (tmux) whose screen is read
back. One stack for the module and three jobs: the watched forget request, an audit of its adapter, a failure."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.services.auth import create_key
from cli.exit_codes import ExitCode
from lethe.settings import Settings
from models.db import session_scope
from tests.conftest import REDIS_DB
from tests.e2e.conftest import ROOT, Service, own_redis_db, start_lethe
from tests.tiny_lm import build_tiny_lm, synthetic_choice_rows, task_corpus

TMUX = shutil.which("tmux") or "/usr/bin/tmux"
WIDTH, HEIGHT = 110, 60
# Random labels on the tiny LM, as small as still draws a curve: a few steps of forgetting after a short fine-tune.
REQUEST = {
    "base_model": "tiny-e2e",
    "heldout_fraction": 0.5,
    "finetune": {"epochs": 4, "learning_rate": 0.01},
    # Every step evaluated and no stop at the target, so the curve has a point per step (6: 8 rows, 3 epochs).
    "method": {
        "name": "random_label",
        "params": {"learning_rate": 0.01, "epochs": 3, "batch_size": 4, "evaluate_every": 1, "stop_at_target": False},
    },
    "probe": False,
    "general_text_perplexity": False,
    "seed": 3,
}


@dataclass
class Stack:
    url: str
    services: list[Service]
    env: dict[str, str]  # what a CLI process gets: the URL and key, nothing of the server's configuration
    workdir: Path

    def lethe(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=self.workdir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def json(self, *args: str) -> dict:
        done = self.lethe(*args, "--json")
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return dict(json.loads(done.stdout))

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.env["LETHE_API_KEY"]}, timeout=30)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str], stack_settings: Settings
) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("cli-e2e")
    started: list[Service] = []

    def start(args: list[str], env: dict[str, str]) -> Service:
        service = Service(args, {**os.environ, **env, "PYTHONUNBUFFERED": "1"}, tmp_path / f"{args[0]}.log")
        started.append(service)
        return service

    env = own_redis_db(stack_env, REDIS_DB)
    try:
        url, services, _ = start_lethe(tmp_path, env, start, with_worker=True)
        # A base model whose checkpoint is gone by the time a worker loads it: a job that fails, quickly.
        gone = build_tiny_lm(tmp_path / "gone-lm", task_corpus())
        subprocess.run(
            [sys.executable, "-m", "cli.main", "base-models", "add", "tiny-gone", str(gone)],
            env={**os.environ, **env},
            cwd=ROOT,
            check=True,
        )
        shutil.rmtree(gone)
        workdir = tmp_path / "work"
        workdir.mkdir()
        # A tenant of its own: the session's catalogue holds other tests' datasets and jobs (the bootstrap key's).
        with session_scope(stack_settings.database_url) as session:
            key = create_key(session, f"cli-e2e-{uuid.uuid4().hex[:8]}")
        cli_env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "LETHE_URL": url,
            "LETHE_API_KEY": key,
            "LETHE_CONFIG": str(tmp_path / "no-config.toml"),
        }
        yield Stack(url, services, cli_env, workdir)
    finally:
        for service in reversed(started):
            service.stop()


@dataclass
class Watched:
    job_id: str
    exit_code: int
    screens: list[str]  # the pane while the job ran, then the whole scrollback at the end


def tmux(socket: Path, *args: str) -> str:
    return subprocess.run([TMUX, "-S", str(socket), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def watched(stack: Stack) -> Iterator[Watched]:
    """Upload a forget set, then `lethe forget submit FILE --watch` in a detached tmux pane of a fixed size."""
    rows = stack.workdir / "categories.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in synthetic_choice_rows(16, seed=4)))
    dataset = stack.json("datasets", "upload", str(rows), "--kind", "choice")
    request = stack.workdir / "request.json"
    request.write_text(json.dumps({**REQUEST, "forget_dataset": dataset["id"]}))

    socket = stack.workdir / "tmux.sock"
    exports = " ".join(f"{k}={v}" for k, v in stack.env.items())
    command = (
        f"cd {stack.workdir} && env -i {exports} TERM=xterm-256color {sys.executable} -m cli.main "
        f"forget submit {request} --watch; echo EXIT=$?; sleep 600"
    )
    tmux(socket, "new-session", "-d", "-s", "lethe", "-x", str(WIDTH), "-y", str(HEIGHT), command)
    tmux(socket, "set-option", "-t", "lethe", "history-limit", "5000")
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            screen = tmux(socket, "capture-pane", "-p", "-J", "-t", "lethe")
            if not screens or screen != screens[-1]:
                screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(
                f"the watch did not end:\n{screens[-1] if screens else ''}\n" + stack.services[1].log()
            )
        screens.append(tmux(socket, "capture-pane", "-p", "-J", "-S", "-", "-t", "lethe"))
    finally:
        subprocess.run([TMUX, "-S", str(socket), "kill-server"], check=False)
    final = screens[-1]
    (stack.workdir / "pane.txt").write_text(final)  # kept with the test's files, to look at
    job_id = next(word for word in final.split() if _is_uuid(word))  # the header names the job first
    exit_code = int(final.split("EXIT=")[1].split()[0])
    yield Watched(job_id, exit_code, screens)


def _is_uuid(word: str) -> bool:
    try:
        uuid.UUID(word)
    except ValueError:
        return False
    return len(word) == 36


def test_a_watched_forget_request_renders_in_a_real_terminal(stack: Stack, watched: Watched) -> None:
    with stack.api() as api:
        job = api.get(f"/v1/jobs/{watched.job_id}").json()
    assert job["status"] == "succeeded", (job, stack.services[1].log())
    reached = job["forgetting"]["target_reached"]
    assert watched.exit_code == (ExitCode.SUCCEEDED if reached else ExitCode.TARGET_NOT_REACHED)

    final = watched.screens[-1]
    for screen in watched.screens:
        # What a terminal shows, no escape sequence left raw, and every line within the pane (joined wrapped lines
        # would be longer).
        assert "\x1b" not in screen and "[0m" not in screen and "[2K" not in screen
        assert all(len(line) <= WIDTH for line in screen.splitlines()), screen
    # While it ran: a bar with its percentage, before the end.
    running = [s for s in watched.screens[:-1] if "EXIT=" not in s and "%" in s and "━" in s]
    assert running, watched.screens
    # The forgetting curve: the plot's axis and columns of blocks, its steps, as many columns as points.
    assert "forget_train accuracy during forgetting: " in final
    plot = [
        line.split("│", 1)[1]
        for line in final.splitlines()
        if "│" in line and set(line.split("│", 1)[1]) <= set(" ▁▂▃▄▅▆▇█")
    ]
    points = [p for p in job["curves"] if p["split"] == "forget_train"]
    assert len(plot) == 8 and max(len(row.rstrip()) for row in plot) <= len(points)
    assert any(c != " " for c in plot[-1])
    assert f"└ step {points[0]['step']} … {points[-1]['step']}" in final
    # The metrics table with intervals, each stage a column, and the verdict of forgetting.
    assert "metrics (value [95% interval])" in final
    header = next(line for line in final.splitlines() if "split" in line and "metric" in line)
    assert [w for w in ("base", "finetuned", "forgotten") if w in header] == ["base", "finetuned", "forgotten"]
    for metric in job["metrics"]:
        if metric["name"] == "accuracy" and metric["ci_low"] is not None:
            assert f"{metric['value']:.3f} [{metric['ci_low']:.2f}, {metric['ci_high']:.2f}]" in final
    assert ("target reached" if reached else "target NOT reached") in final
    assert f"adapter {job['adapter_id']}" in final


def test_datasets_jobs_and_adapters(stack: Stack, watched: Watched) -> None:
    with stack.api() as api:
        job = api.get(f"/v1/jobs/{watched.job_id}").json()
        adapter = api.get(f"/v1/adapters/{job['adapter_id']}").json()
    datasets = stack.json("datasets", "list")
    assert datasets["next_cursor"] is None and [d["name"] for d in datasets["items"]] == ["categories"]
    assert stack.json("datasets", "get", datasets["items"][0]["id"]) == datasets["items"][0]
    table = stack.lethe("datasets", "list")
    assert table.returncode == 0 and datasets["items"][0]["id"] in table.stdout and "categories" in table.stdout

    bad = stack.workdir / "bad.jsonl"
    bad.write_text('{"prompt": "no choices"}\n')
    refused = stack.lethe("datasets", "upload", str(bad), "--kind", "choice")
    assert refused.returncode == ExitCode.API_ERROR and refused.stderr.startswith("lethe: POST /v1/datasets: 4")

    jobs = stack.json("jobs", "list", "--kind", "forget")
    assert watched.job_id in [j["id"] for j in jobs["items"]]
    assert stack.json("jobs", "get", watched.job_id)["forgetting"] == job["forgetting"]
    # Watching an ended job prints its outcome (stdout is no terminal: no live screen) and exits as the watch did.
    again = stack.lethe("jobs", "watch", watched.job_id)
    assert again.returncode == watched.exit_code, again.stderr
    assert "metrics (value [95% interval])" in again.stdout and "\x1b" not in again.stdout

    assert stack.json("adapters", "get", adapter["id"])["sha256"] == adapter["sha256"]
    saved = stack.lethe("adapters", "download", adapter["id"], "-o", "adapter.tar.gz")
    assert saved.returncode == 0, saved.stderr
    content = (stack.workdir / "adapter.tar.gz").read_bytes()
    assert len(content) == adapter["size_bytes"] and hashlib.sha256(content).hexdigest() == adapter["sha256"]
    assert f"sha256 {adapter['sha256']}, checked" in saved.stdout
    assert stack.lethe("adapters", "download", adapter["id"], "-o", "adapter.tar.gz").returncode == ExitCode.USAGE


def test_an_audit_from_submit_to_the_opened_report(stack: Stack, watched: Watched) -> None:
    with stack.api() as api:
        adapter_id = api.get(f"/v1/jobs/{watched.job_id}").json()["adapter_id"]
    submitted = stack.lethe("audits", "submit", adapter_id, "--attack", "quantize", "--watch")
    found = re.search(r"^audit (\S+) of adapter", submitted.stdout, re.MULTILINE)
    assert found, (submitted.stdout, submitted.stderr)
    audit_id = found.group(1)
    with stack.api() as api:
        audit = api.get(f"/v1/audits/{audit_id}").json()
    assert audit["status"] == "succeeded", (audit, submitted.stderr, stack.services[1].log())
    codes = {"robust": ExitCode.SUCCEEDED, "shallow": ExitCode.SHALLOW, "inconclusive": ExitCode.INCONCLUSIVE}
    assert submitted.returncode == codes[audit["verdict"]], submitted.stderr
    assert f"verdict: {audit['verdict']}" in submitted.stdout and "quantize" in submitted.stdout
    got = stack.lethe("audits", "get", audit_id)
    assert got.returncode == submitted.returncode and f"verdict: {audit['verdict']}" in got.stdout
    assert audit_id in [a["id"] for a in stack.json("audits", "list")["items"]]

    saved = stack.lethe("audits", "report", audit_id, "-o", "report.json")
    assert saved.returncode == 0, saved.stderr
    with stack.api() as api:
        assert (stack.workdir / "report.json").read_bytes() == api.get(f"/v1/audits/{audit_id}/report").content
    # --open hands the saved page to $BROWSER (here a script that writes down what it was given).
    opened = stack.workdir / "opened.txt"
    browser = stack.workdir / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    stack.env["BROWSER"] = str(browser)
    try:
        shown = stack.lethe("audits", "report", audit_id, "--format", "html", "--open")
    finally:
        del stack.env["BROWSER"]
    assert shown.returncode == 0, shown.stderr
    page = stack.workdir / f"lethe-audit-{audit_id}.html"
    assert opened.read_text().strip() == page.resolve().as_uri()
    assert page.read_text().lstrip().lower().startswith("<!doctype html")


def test_a_failed_job_gives_its_exit_code(stack: Stack, watched: Watched) -> None:
    # Any dataset will do: the base model is what fails.
    datasets = stack.json("datasets", "list")["items"]
    request = {**REQUEST, "base_model": "tiny-gone", "forget_dataset": datasets[0]["id"], "finetune": None}
    failed = stack.lethe("forget", "submit", "-", "--watch", stdin=json.dumps(request))
    assert failed.returncode == ExitCode.JOB_FAILED, (failed.stdout, failed.stderr)
    assert "failed" in failed.stdout and "base_model_unavailable" in failed.stdout
    job_id = next(w for w in failed.stdout.split() if _is_uuid(w))
    # Cancelling an ended job: the API's 409, one line, its own exit code.
    refused = stack.lethe("jobs", "cancel", job_id)
    assert refused.returncode == ExitCode.API_ERROR
    assert refused.stderr.startswith(f"lethe: POST /v1/jobs/{job_id}/cancel: 409 conflict: ")
    # Deleting it: a summary of the signed receipt; the job is gone (410 from then on).
    deleted = stack.lethe("jobs", "delete", job_id)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith(f"deleted job {job_id} at ") and "receipt " in deleted.stdout
    gone = stack.lethe("jobs", "get", job_id)
    assert gone.returncode == ExitCode.API_ERROR and f"GET /v1/jobs/{job_id}: 410 " in gone.stderr
    spare = stack.workdir / "spare.jsonl"
    spare.write_text("".join(json.dumps(r) + "\n" for r in synthetic_choice_rows(4, seed=9)))
    dataset = stack.json("datasets", "upload", str(spare), "--kind", "choice")
    signed = stack.json("datasets", "delete", dataset["id"])
    assert signed["receipt"]["resource_id"] == dataset["id"] and signed["signature"]
