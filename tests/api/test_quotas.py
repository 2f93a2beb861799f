"""Per-tenant limits through HTTP on the real app: each refused at its edge, accepted just below, and a refused
request changes nothing."""

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.services.auth import create_key
from cli.openapi import current_spec
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobRepository
from tests.api.conftest import CHOICE_ROWS, forget_adapter, jsonl, upload

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(stack_settings: Settings, api_key: str, app_client: TestClient) -> Iterator[MakeClient]:
    """An app of its own with some limits lowered (Settings field names), and the test tenant's key (app_client
    registers the base model `tiny-registered`)."""
    with ExitStack() as stack:

        def make(**limits: Any) -> TestClient:
            client = stack.enter_context(TestClient(create_app(stack_settings.model_copy(update=limits))))
            client.headers["X-API-Key"] = api_key
            return client

        yield make


def forget_request(dataset_id: str, **params: Any) -> dict[str, Any]:
    return {
        "base_model": "tiny-registered",
        "forget_dataset": dataset_id,
        "heldout_fraction": 0.2,
        "method": {"name": "random_label", "params": params},
    }


def recorded_puts(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys the app puts in its object store from now on."""
    store = client.app.state.store  # type: ignore[attr-defined]
    keys: list[str] = []
    put = store.put

    def recording_put(key: str, *args: Any, **kwargs: Any) -> None:
        keys.append(key)
        put(key, *args, **kwargs)

    monkeypatch.setattr(store, "put", recording_put)
    return keys


def retry_after(response: Any) -> int:
    return int(response.headers["Retry-After"])


# Active jobs.


def test_a_job_over_the_active_jobs_limit_is_429_and_writes_nothing(make_client: MakeClient) -> None:
    client = make_client(max_active_jobs_per_tenant=2, active_jobs_retry_after_s=30)
    dataset = upload(client, CHOICE_ROWS).json()["id"]
    first = client.post("/v1/forget-requests", json=forget_request(dataset))
    assert first.status_code == 202, first.text
    # One below the limit: accepted.
    assert client.post("/v1/forget-requests", json=forget_request(dataset)).status_code == 202
    refused = client.post("/v1/forget-requests", json=forget_request(dataset))
    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_active_jobs"
    assert "2 queued or running jobs" in refused.json()["detail"]
    assert "LETHE_MAX_ACTIVE_JOBS_PER_TENANT) is 2" in refused.json()["detail"]
    assert retry_after(refused) == 30
    assert len(client.get("/v1/jobs").json()["items"]) == 2
    # A finished job frees its place.
    assert client.post(f"/v1/jobs/{first.json()['job_id']}/cancel").status_code == 200
    assert client.post("/v1/forget-requests", json=forget_request(dataset)).status_code == 202


def test_audit_jobs_count_with_forget_jobs(make_client: MakeClient, stack_settings: Settings) -> None:
    client = make_client(max_active_jobs_per_tenant=2)
    adapter_id = forget_adapter(client, stack_settings)
    dataset = upload(client, CHOICE_ROWS).json()["id"]
    assert client.post("/v1/forget-requests", json=forget_request(dataset)).status_code == 202
    assert client.post("/v1/audits", json={"adapter_id": adapter_id}).status_code == 202
    refused = client.post("/v1/audits", json={"adapter_id": adapter_id})
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_active_jobs"
    assert retry_after(refused) >= 1
    assert [job["kind"] for job in client.get("/v1/jobs").json()["items"]].count("audit") == 1


def test_two_requests_at_one_below_the_limit_do_not_both_pass(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Postgres: both requests count the tenant's jobs before either inserts, unless the tenant's lock holds
    the second back. Each request waits (up to 2 s) after counting for the other to have counted too."""
    client = make_client(max_active_jobs_per_tenant=2)
    dataset = upload(client, CHOICE_ROWS).json()["id"]
    assert client.post("/v1/forget-requests", json=forget_request(dataset)).status_code == 202
    both_counted = threading.Barrier(2, timeout=2)
    count_active = JobRepository.count_active

    def count_then_wait(self: JobRepository, tenant_id: uuid.UUID) -> int:
        active = count_active(self, tenant_id)
        # A broken barrier: the other request is held back by the lock, go on alone.
        with contextlib.suppress(threading.BrokenBarrierError):
            both_counted.wait()
        return active

    monkeypatch.setattr(JobRepository, "count_active", count_then_wait)
    statuses: list[int] = []

    def submit() -> None:
        statuses.append(client.post("/v1/forget-requests", json=forget_request(dataset)).status_code)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [202, 429]
    assert len(client.get("/v1/jobs").json()["items"]) == 2


# Stored bytes.


def test_an_upload_over_the_stored_bytes_limit_is_refused_before_it_is_stored(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = jsonl(CHOICE_ROWS), jsonl(CHOICE_ROWS[:5])
    client = make_client(max_stored_bytes_per_tenant=len(first) + len(second))
    assert upload(client, first).status_code == 201
    puts = recorded_puts(client, monkeypatch)
    one_byte_over = second + b"\n"
    refused = upload(client, one_byte_over, name="second")
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "quota_exceeded",
        "detail": f"the tenant stores {len(first)} bytes (datasets, adapters, evidence and reports); this upload of "
        f"{len(one_byte_over)} bytes would go over the limit (LETHE_MAX_STORED_BYTES_PER_TENANT) of "
        f"{len(first) + len(second)} bytes",
    }
    assert puts == []
    assert len(client.get("/v1/datasets").json()["items"]) == 1
    # Up to the limit exactly: accepted.
    assert upload(client, second, name="second").status_code == 201
    assert len(puts) == 1


def test_a_job_is_refused_once_the_tenant_is_at_its_stored_bytes_limit(make_client: MakeClient) -> None:
    content = jsonl(CHOICE_ROWS)
    below = make_client(max_stored_bytes_per_tenant=len(content) + 1)
    dataset = upload(below, content).json()["id"]
    assert below.post("/v1/forget-requests", json=forget_request(dataset)).status_code == 202
    at_limit = make_client(max_stored_bytes_per_tenant=len(content))
    refused = at_limit.post("/v1/forget-requests", json=forget_request(dataset))
    assert refused.status_code == 403 and refused.json()["error"] == "quota_exceeded"
    assert f"stores {len(content)} bytes" in refused.json()["detail"]
    assert f"of {len(content)} bytes" in refused.json()["detail"]
    assert len(at_limit.get("/v1/jobs").json()["items"]) == 1


# Request rate.


def test_writes_over_the_rate_limit_are_429_with_retry_after(make_client: MakeClient, app_client: TestClient) -> None:
    # One token a minute: the burst of 3 is all the test can use.
    client = make_client(rate_limit_burst=3, rate_limit_per_minute=1)
    for name in ["a", "b", "c"]:
        assert upload(client, CHOICE_ROWS, name=name).status_code == 201
    refused = upload(client, CHOICE_ROWS, name="d")
    assert refused.status_code == 429
    assert refused.json()["error"] == "rate_limited"
    assert "more than 3 writes at once or more than 1 a minute" in refused.json()["detail"]
    # The next token comes a minute after the first write.
    assert 50 <= retry_after(refused) <= 60
    # Nothing was written, and reads are not limited.
    assert [d["name"] for d in client.get("/v1/datasets").json()["items"]] == ["c", "b", "a"]
    for _ in range(5):
        assert client.get("/v1/jobs").status_code == 200


def test_the_rate_limit_is_per_tenant(make_client: MakeClient, stack_settings: Settings) -> None:
    client = make_client(rate_limit_burst=1, rate_limit_per_minute=1)
    assert upload(client, CHOICE_ROWS).status_code == 201
    assert upload(client, CHOICE_ROWS).status_code == 429
    with session_scope(stack_settings.database_url) as session:
        other_key = create_key(session, f"tenant-{uuid.uuid4().hex[:12]}")
    other = upload_as(client, other_key)
    assert other.status_code == 201


def upload_as(client: TestClient, api_key: str) -> Any:
    return client.post(
        "/v1/datasets",
        files={"file": ("d.jsonl", jsonl(CHOICE_ROWS))},
        data={"name": "parity", "kind": "choice"},
        headers={"X-API-Key": api_key},
    )


# Job cost.


def test_a_forget_request_over_the_cost_limit_is_422_naming_the_estimate(make_client: MakeClient) -> None:
    # 10 rows, 2 held out: 8 trained a epoch in one batch of 8. 4 epochs: forget 32, evaluation (2 + 4 epoch
    # checks) * 10 / 3 = 20; total 52. 5 epochs: 40 + 70 / 3 = 63.
    client = make_client(max_job_cost=52)
    dataset = upload(client, CHOICE_ROWS).json()["id"]
    refused = client.post("/v1/forget-requests", json=forget_request(dataset, epochs=5))
    assert refused.status_code == 422
    assert refused.json() == {
        "error": "cost_exceeded",
        "detail": "the forget request's estimated cost of 63 example-passes (forget 40 + evaluation 23) is over the "
        "limit (LETHE_MAX_JOB_COST) of 52 example-passes: use fewer rows, epochs or steps",
    }
    assert client.get("/v1/jobs").json()["items"] == []
    assert client.post("/v1/forget-requests", json=forget_request(dataset, epochs=4)).status_code == 202


def test_an_audit_over_the_cost_limit_is_422(make_client: MakeClient, stack_settings: Settings) -> None:
    # The audited job: 10 rows, 2 held out, batch 8. Relearning on 2 rows for 10 steps: 20, its one curve scored
    # twice on 2 rows: 4 / 3; total 21.3. For 11 steps: 23.3.
    client = make_client(max_job_cost=22)
    adapter_id = forget_adapter(client, stack_settings)

    def audit(steps: int) -> Any:
        params = {"examples": [2], "steps": steps, "evaluate_every": steps, "benign": False}
        relearn = {"name": "relearn", "params": params}
        return client.post("/v1/audits", json={"adapter_id": adapter_id, "attacks": [relearn]})

    refused = audit(11)
    assert refused.status_code == 422 and refused.json()["error"] == "cost_exceeded"
    assert "23 example-passes (relearn 22 + relearn_evaluation 1)" in refused.json()["detail"]
    assert "(LETHE_MAX_JOB_COST) of 22 example-passes" in refused.json()["detail"]
    assert [job["kind"] for job in client.get("/v1/jobs").json()["items"]] == ["forget"]
    assert audit(10).status_code == 202


# The spec.


def test_every_write_declares_its_429_with_retry_after_and_the_job_and_upload_routes_their_quota() -> None:
    spec = json.loads(current_spec())
    writes = {
        op["operationId"]: op["responses"]
        for path, operations in spec["paths"].items()
        for method, op in operations.items()
        if path.startswith("/v1/") and method in ("post", "delete")
    }
    assert {"upload_dataset", "submit_forget_request", "submit_audit", "cancel_job"} <= writes.keys()
    for operation_id, responses in writes.items():
        assert "Retry-After" in responses["429"]["headers"], operation_id
    for operation_id in ("upload_dataset", "submit_forget_request", "submit_audit"):
        assert "quota_exceeded" in writes[operation_id]["403"]["description"], operation_id
    for operation_id in ("submit_forget_request", "submit_audit"):
        assert "cost_exceeded" in writes[operation_id]["422"]["description"], operation_id
