"""GET /metrics on the real app (Postgres catalogue, Redis broker): request figures by route template, jobs by
state as the catalogue counts them, the queue's depth as Redis holds it, workers' CUDA memory, the optional token."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import SecretStr
from sqlalchemy import func, select

from api.app import create_app
from lethe.queue import QUEUE, send_job
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobRepository, TenantRepository, WorkerDevice, WorkerRepository
from models.tables import Job, utcnow
from tests.conftest import forget_job_spec

ROOT = Path(__file__).resolve().parents[2]


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, list[Sample]]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def samples(families: dict[str, list[Sample]], name: str, **labels: str) -> list[Sample]:
    return [s for s in families[name] if all(s.labels.get(k) == v for k, v in labels.items())]


def test_requests_are_counted_and_timed_by_route_template_and_status(client: TestClient) -> None:
    missing = uuid.uuid4()
    before = scrape(client)
    assert client.get(f"/v1/jobs/{missing}").status_code == 404
    assert client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/v1/jobs", headers={"X-API-Key": "not-a-key"}).status_code == 401  # answered by the gate
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)

    def count(families: dict[str, list[Sample]], route: str, status: str) -> float:
        found = samples(families, "lethe_http_requests", method="GET", route=route, status=status)
        return sum(s.value for s in found if s.name == "lethe_http_requests_total")

    # Two different ids, one series: the template, never the raw path (bounded cardinality).
    assert count(after, "/v1/jobs/{job_id}", "404") - count(before, "/v1/jobs/{job_id}", "404") == 2
    assert count(after, "/v1/jobs", "401") - count(before, "/v1/jobs", "401") == 1
    assert count(after, "<unmatched>", "404") - count(before, "<unmatched>", "404") == 1
    routes = {s.labels["route"] for s in after["lethe_http_requests"]}
    assert not any(str(missing) in route for route in routes)
    # GET only: the session's shared app has answered other methods on this route too (DELETE, in other tests).
    latency = samples(
        after, "lethe_http_request_duration_seconds", method="GET", route="/v1/jobs/{job_id}", status="404"
    )
    [observed] = [s for s in latency if s.name == "lethe_http_request_duration_seconds_count"]
    assert observed.value >= 2
    assert any(s.name.endswith("_bucket") and s.labels["le"] == "+Inf" for s in latency)
    # Without a token configured, /metrics is public: no key; and it is not an operation of the spec.
    assert TestClient(client.app).get("/metrics").status_code == 200
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_jobs_by_state_match_the_catalogue(client: TestClient, stack_settings: Settings) -> None:
    code = f"metrics_test_{uuid.uuid4().hex[:8]}"
    with session_scope(stack_settings.database_url) as session:
        tenant = TenantRepository(session).get_or_create(f"metrics-{uuid.uuid4().hex[:8]}")
        spec = forget_job_spec(uuid.uuid4()).model_dump(mode="json")
        for status, error_code in [("failed", code), ("failed", code), ("succeeded", None)]:
            JobRepository(session).add(
                Job(tenant_id=tenant.id, kind="forget", status=status, stage="done", spec=spec, error_code=error_code)
            )
    families = scrape(client)
    with session_scope(stack_settings.database_url) as session:
        rows = session.execute(
            select(Job.kind, Job.status, Job.error_code, func.count()).group_by(Job.kind, Job.status, Job.error_code)
        )
        catalogue = {(kind, status, error_code or ""): count for kind, status, error_code, count in rows}
    exported = {(s.labels["kind"], s.labels["status"], s.labels["error_code"]): s.value for s in families["lethe_jobs"]}
    assert exported[("forget", "failed", code)] == 2
    # Ended jobs stay ended (the reaper moves only queued and running ones): their counts cannot move between the
    # scrape and this read.
    ended = {key: value for key, value in catalogue.items() if key[1] in ("succeeded", "failed", "cancelled")}
    assert {
        key: value for key, value in exported.items() if key in ended or key[1] not in ("queued", "running")
    } == ended
    assert samples(families, "lethe_metrics_source_up", source="catalogue")[0].value == 1


def test_queue_depth_is_the_messages_waiting_in_redis(client: TestClient, stack_settings: Settings) -> None:
    broker = redis.Redis.from_url(stack_settings.broker_url)
    queue = client.app.state.queue  # type: ignore[attr-defined]
    for _ in range(3):
        send_job(queue, "forget", str(uuid.uuid4()))
    try:
        waiting_before = broker.llen(QUEUE)
        [depth] = samples(scrape(client), "lethe_queue_messages", queue=QUEUE)
        waiting_after = broker.llen(QUEUE)
        # No worker consumes this Redis database; the API's relay may add messages meanwhile, never take any.
        assert waiting_before >= 3
        assert waiting_before <= depth.value <= waiting_after
    finally:
        broker.delete(QUEUE)
    [empty] = samples(scrape(client), "lethe_queue_messages", queue=QUEUE)
    assert empty.value == broker.llen(QUEUE)


def test_live_workers_and_their_cuda_memory_are_exported(client: TestClient, stack_settings: Settings) -> None:
    gpu, cpu, gone = (f"metrics-test-{name}-{uuid.uuid4().hex[:6]}" for name in ("gpu", "cpu", "gone"))
    with session_scope(stack_settings.database_url) as session:
        workers = WorkerRepository(session)
        workers.beat(gpu, utcnow(), WorkerDevice("cuda:0 (NVIDIA H200)", 1_000, 2_000, 150_000))
        workers.beat(cpu, utcnow(), WorkerDevice("cpu (test)"))
        workers.beat(gone, utcnow().replace(year=2020), WorkerDevice("cuda:0 (old)", 1, 1, 1))
    families = scrape(client)
    memory = {
        s.labels["kind"]: s.value
        for s in samples(families, "lethe_worker_cuda_memory_bytes", worker=gpu, device="cuda:0 (NVIDIA H200)")
    }
    assert memory == {"allocated": 1_000, "reserved": 2_000, "total": 150_000}
    assert not samples(families, "lethe_worker_cuda_memory_bytes", worker=cpu)  # a CPU worker has none
    assert samples(families, "lethe_worker_last_beat_timestamp_seconds", worker=cpu, device="cpu (test)")
    beaten = {s.labels["worker"] for s in families["lethe_worker_last_beat_timestamp_seconds"]}
    assert gone not in beaten  # past the heartbeat timeout: not alive
    [alive] = families["lethe_workers_alive"]
    assert alive.value == len(beaten) >= 2


def test_a_metrics_token_is_required_when_configured(stack_settings: Settings) -> None:
    token = "metrics-token-for-the-test-0123"
    settings = stack_settings.model_copy(update={"metrics_token": SecretStr(token)})
    with TestClient(create_app(settings)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token}):
            response = client.get("/metrics", headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"] == "unauthorized"
        families = scrape(client, {"Authorization": f"Bearer {token}"})
    assert "lethe_jobs" in families and "lethe_http_requests" in families


def test_openmetrics_is_served_when_asked_for(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


@pytest.mark.parametrize("header", ["client-chosen-id-42", "3f1c9a4e-1c3b-4d2a-9c77-0a8e5a2f0b11"])
def test_a_request_id_is_returned_and_kept_when_given(client: TestClient, header: str) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": header}).headers["x-request-id"] == header
    fresh = client.get("/healthz").headers["x-request-id"]
    assert len(fresh) == 32 and fresh != header
    # Not a plain token (a log line must not be forged through it): replaced.
    assert client.get("/healthz", headers={"X-Request-ID": "not an id!"}).headers["x-request-id"] != "not an id!"


# Run in a process of its own: prometheus-client picks its multiprocess mode when it is imported.
_SERVE_HEALTH_CHECKS = """
import sys
from fastapi.testclient import TestClient
from api.app import create_app
client = TestClient(create_app())
for _ in range(int(sys.argv[1])):
    assert client.get("/healthz").status_code == 200
response = client.get("/metrics")
assert response.status_code == 200
print(response.text)
"""


def test_in_multiprocess_mode_every_process_answers_the_sum_of_all(
    stack_env: dict[str, str], stack_settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, **stack_env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def serve(health_checks: int) -> dict[str, list[Sample]]:
        finished = subprocess.run(
            [sys.executable, "-c", _SERVE_HEALTH_CHECKS, str(health_checks)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert finished.returncode == 0, finished.stderr
        return {family.name: family.samples for family in text_string_to_metric_families(finished.stdout)}

    def health_checks(families: dict[str, list[Sample]]) -> float:
        found = samples(families, "lethe_http_requests", route="/healthz", status="200")
        return sum(s.value for s in found if s.name == "lethe_http_requests_total")

    assert health_checks(serve(3)) == 3
    # A second process (another pid) counts its own 2 and answers 5: the first one's counts stay in the directory.
    second = serve(2)
    assert health_checks(second) == 5
    assert "lethe_jobs" in second and not any(name.startswith("process_") for name in second)
