"""The API never blocks on itself: uploads, submissions and cancels at once, on a real `lethe serve`.

One client uploads datasets while another submits forget jobs and cancels them, and a third probes /healthz
throughout; a job runs on the worker meanwhile. No response may be a 5xx, /healthz must stay fast (an event loop
blocked by a database call shows up here first) and the running job's heartbeats must get through. The /healthz
probe runs in a process of its own (tests/e2e/healthz_probe.py), so its timings are the server's, not pauses of
this test process.
"""

import json
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lethe.settings import Settings
from tests.e2e.conftest import BOOTSTRAP_KEY, ROOT, start_lethe, upload_rows, wait_for_job
from tests.tiny_lm import synthetic_choice_rows

UPLOADS = 15
SUBMISSIONS = 10
# /healthz does no I/O: anything slower than this means the event loop was busy with something else.
HEALTHZ_MAX_S = 1.0
# Long enough to keep running through the mix: many epochs, no early stop.
SLOW_METHOD = {"name": "gradient_ascent", "params": {"epochs": 100, "batch_size": 2, "stop_at_target": False}}
QUICK_METHOD = {"name": "random_label", "params": {"epochs": 1}}
# A stale heartbeat fails a running job as worker_lost after this long: short, so lost beats would show.
# The mix sends about 45 writes in seconds: more than a tenant's default write burst (this test is about the
# catalogue under contention, not the rate limit, which tests/api/test_quotas.py covers).
CONTENTION_ENV = {
    "LETHE_HEARTBEAT_TIMEOUT_S": "10",
    "LETHE_REAPER_INTERVAL_S": "1",
    "LETHE_RATE_LIMIT_BURST": "1000",
}


class Recorder:
    """Every response status of the mix."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: list[tuple[str, int, str]] = []

    def call(self, what: str, send: Callable[..., httpx.Response], *args: Any, **kwargs: Any) -> httpx.Response | None:
        """The response of `send(*args, **kwargs)`, recorded; a dropped connection is recorded as status 0."""
        try:
            response = send(*args, **kwargs)
        except httpx.HTTPError as exc:
            with self.lock:
                self.statuses.append((what, 0, repr(exc)))
            return None
        with self.lock:
            self.statuses.append((what, response.status_code, response.text[:300]))
        return response

    def failures(self) -> list[tuple[str, int, str]]:
        return [entry for entry in self.statuses if entry[1] >= 500 or entry[1] == 0]


def _uploads(base_url: str, recorder: Recorder, rows: list[dict]) -> None:
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=120) as client:
        for index in range(UPLOADS):
            recorder.call(
                "upload",
                client.post,
                "/v1/datasets",
                files={"file": ("rows.jsonl", content)},
                data={"name": f"mix-{index}", "kind": "choice"},
            )


def _submit_and_cancel(base_url: str, recorder: Recorder, forget_id: str) -> None:
    body = {"base_model": "tiny-e2e", "forget_dataset": forget_id, "method": QUICK_METHOD, "probe": False}
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=120) as client:
        for _ in range(SUBMISSIONS):
            submitted = recorder.call("submit", client.post, "/v1/forget-requests", json=body)
            if submitted is not None and submitted.status_code == 202:
                recorder.call("cancel", client.post, f"/v1/jobs/{submitted.json()['job_id']}/cancel")


class HealthzProbe:
    """tests/e2e/healthz_probe.py in a process of its own, probing /healthz from its start until stop()."""

    def __init__(self, base_url: str) -> None:
        command = [sys.executable, "-m", "tests.e2e.healthz_probe", base_url]
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def started(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "probing", "the /healthz probe did not start"

    def stop(self) -> tuple[list[float], list[int]]:
        """Every latency in seconds and every status (0: no answer) the probe saw."""
        output, _ = self.process.communicate(timeout=120)  # closes its stdin, which stops it
        assert self.process.returncode == 0, f"the /healthz probe failed ({self.process.returncode})"
        result = json.loads(output)
        return result["latencies_s"], result["statuses"]


def _concurrent_mix(tmp_path: Path, env: dict[str, str], start_service, with_worker: bool) -> None:
    base_url, services, _ = start_lethe(tmp_path, {**env, **CONTENTION_ENV}, start_service, with_worker)
    recorder = Recorder()
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=120) as client:
        forget_id = upload_rows(client, synthetic_choice_rows(64, seed=3), "mix-forget")
        slow = client.post(
            "/v1/forget-requests",
            json={"base_model": "tiny-e2e", "forget_dataset": forget_id, "method": SLOW_METHOD, "probe": False},
        )
        assert slow.status_code == 202, slow.text
        slow_job_id = slow.json()["job_id"]

        # Big enough that checking and storing one takes a while: 40000 rows, about 4 MB.
        big_rows = synthetic_choice_rows(40000, seed=5)
        workers = [
            threading.Thread(target=_uploads, args=(base_url, recorder, big_rows)),
            threading.Thread(target=_submit_and_cancel, args=(base_url, recorder, forget_id)),
        ]
        probe = HealthzProbe(base_url)
        try:
            probe.started()
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join(timeout=600)
        finally:
            healthz_s, healthz_statuses = probe.stop()

        slow_job = client.get(f"/v1/jobs/{slow_job_id}").json()
        if slow_job["status"] in ("queued", "running"):
            client.post(f"/v1/jobs/{slow_job_id}/cancel")
            slow_job = wait_for_job(client, slow_job_id, services, timeout_s=120)

    latencies = sorted(healthz_s)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"healthz: {len(latencies)} probes, median {statistics.median(latencies):.3f} s, p95 {p95:.3f} s, "
        f"max {latencies[-1]:.3f} s; other responses: {len(recorder.statuses)}"
    )
    assert not recorder.failures(), recorder.failures()
    assert set(healthz_statuses) == {200}, sorted(set(healthz_statuses))
    answered = [(what, code) for what, code, _ in recorder.statuses]
    assert answered.count(("upload", 201)) == UPLOADS, recorder.statuses
    # The quick jobs wait behind the slow one (one worker): each is accepted, then cancelled while queued.
    assert answered.count(("submit", 202)) == answered.count(("cancel", 200)) == SUBMISSIONS, recorder.statuses
    assert latencies[-1] < HEALTHZ_MAX_S, f"/healthz took {latencies[-1]:.2f} s while the mix ran"
    # Its heartbeats got through: the job ended cancelled by us (or done), never failed as worker_lost.
    assert slow_job["status"] != "failed", slow_job


def test_concurrent_mix_on_the_embedded_default(tmp_path: Path, start_service) -> None:
    _concurrent_mix(tmp_path, {"LETHE_DATA_DIR": str(tmp_path / "lethe")}, start_service, with_worker=False)


def test_concurrent_mix_on_the_stack(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    _concurrent_mix(tmp_path, stack_env, start_service, with_worker=True)
