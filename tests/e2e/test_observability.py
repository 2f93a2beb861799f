"""Operating the stack: `lethe serve` (uvicorn) and `lethe worker` (Celery) write JSON log lines that carry the
request's and the job's ids, and GET /metrics on uvicorn reports the job and the live worker from the catalogue."""

import json
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from lethe.settings import Settings
from tests.conftest import REDIS_DB, wait_for
from tests.e2e.conftest import BOOTSTRAP_KEY, StartService, own_redis_db, start_lethe, upload_rows, wait_for_job
from tests.tiny_lm import synthetic_choice_rows


def json_lines(path: Path) -> list[dict]:
    """Every line of a service's log, each of which must be one JSON object."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{path.name}: not a JSON line: {line!r}") from exc
    return records


def test_json_logs_carry_request_and_job_ids_and_metrics_see_the_job_and_worker(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service: StartService
) -> None:
    env = {**own_redis_db(stack_env, REDIS_DB), "LETHE_LOG_FORMAT": "json"}
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    request_id = f"e2e-observability-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        forget_id = upload_rows(client, synthetic_choice_rows(12, seed=3), "observed")
        submitted = client.post(
            "/v1/forget-requests",
            headers={"X-Request-ID": request_id},
            json={
                "base_model": "tiny-e2e",
                "forget_dataset": forget_id,
                "heldout_fraction": 0.5,
                "method": {"name": "gradient_ascent", "params": {"max_steps": 2, "batch_size": 4}},
                "probe": False,
                "general_text_perplexity": False,
            },
        )
        assert submitted.status_code == 202, submitted.text
        assert submitted.headers["x-request-id"] == request_id
        job_id = submitted.json()["job_id"]
        job = wait_for_job(client, job_id, services, timeout_s=300)
        assert job["status"] == "succeeded", (job, [s.log() for s in services])

        response = client.get("/metrics")
        assert response.status_code == 200
        families = {f.name: f.samples for f in text_string_to_metric_families(response.text)}

    # The API: the submitting request's lines carry its id, uvicorn's access line included.
    api_lines = json_lines(services[0].log_path)
    of_request = [r for r in api_lines if r.get("request_id") == request_id]
    access = [r for r in of_request if r["logger"] == "uvicorn.access"]
    assert access and "POST /v1/forget-requests" in access[0]["event"], of_request
    assert all(r["service"] == "api" and {"timestamp", "level", "event"} <= set(r) for r in api_lines)
    # The worker: the job's lines carry its id and the id of the request that submitted it.
    assert wait_for(lambda: any(r.get("job_id") == job_id for r in json_lines(services[1].log_path)), 10)
    worker_lines = json_lines(services[1].log_path)
    of_job = [r for r in worker_lines if r.get("job_id") == job_id]
    assert any("claimed forget job" in r["event"] for r in of_job), of_job
    assert all(r["request_id"] == request_id and r["service"] == "worker" and r["attempt"] == 1 for r in of_job)
    assert any(r.get("task_id") for r in of_job)  # the Celery task it ran in
    assert any(r["logger"].startswith("celery") for r in worker_lines)  # Celery's own lines are JSON too

    # /metrics on uvicorn: the job as the catalogue holds it, the worker alive on the CPU, this route counted.
    jobs = {(s.labels["kind"], s.labels["status"]): s.value for s in families["lethe_jobs"]}
    assert jobs[("forget", "succeeded")] >= 1
    beats = families["lethe_worker_last_beat_timestamp_seconds"]
    cpu_workers = {s.labels["worker"] for s in beats if s.labels["device"].startswith("cpu")}
    assert cpu_workers, beats
    memory = families["lethe_worker_cuda_memory_bytes"]
    assert not [s for s in memory if s.labels["worker"] in cpu_workers]  # a CPU worker reports no CUDA memory
    submissions = [
        s
        for s in families["lethe_http_requests"]
        if s.name.endswith("_total") and s.labels["route"] == "/v1/forget-requests" and s.labels["status"] == "202"
    ]
    assert submissions and submissions[0].value == 1
