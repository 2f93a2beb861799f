"""Idempotency-Key on every POST that creates: a retry replays the first response and creates nothing more."""

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.services.auth import create_key
from lethe.settings import Settings
from models.db import session_scope
from models.migrate import upgrade
from models.repositories import IdempotencyKeyRepository
from tests.api.conftest import CHOICE_ROWS, forget_adapter, jsonl, upload


@dataclass
class Operation:
    """A creating POST: `send(headers, variant)` sends one of two different valid requests, `send_bad` an invalid
    one, and `created()` counts what the operation has created for the tenant (read over HTTP)."""

    status_code: int
    send: Callable[[dict[str, str], int], httpx.Response]
    send_bad: Callable[[dict[str, str]], httpx.Response]
    created: Callable[[], int]


def _jobs_of_kind(client: TestClient, kind: str) -> int:
    return sum(1 for job in client.get("/v1/jobs").json()["items"] if job["kind"] == kind)


def _upload_dataset(client: TestClient, _settings: Settings) -> Operation:
    def send(headers: dict[str, str], variant: int) -> httpx.Response:
        content = jsonl(CHOICE_ROWS[: 5 + variant])
        files = {"file": ("d.jsonl", content)}
        return client.post("/v1/datasets", files=files, data={"name": "parity", "kind": "choice"}, headers=headers)

    def send_bad(headers: dict[str, str]) -> httpx.Response:
        files = {"file": ("d.jsonl", jsonl(CHOICE_ROWS[:5]))}
        return client.post("/v1/datasets", files=files, data={"name": "parity", "kind": "poem"}, headers=headers)

    return Operation(201, send, send_bad, lambda: len(client.get("/v1/datasets").json()["items"]))


def _submit_forget_request(client: TestClient, _settings: Settings) -> Operation:
    forget_id = upload(client, CHOICE_ROWS, name="forget").json()["id"]

    def body(seed: int, method: str = "random_label") -> dict[str, Any]:
        return {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": method}, "seed": seed}

    return Operation(
        202,
        lambda headers, variant: client.post("/v1/forget-requests", json=body(seed=variant), headers=headers),
        lambda headers: client.post("/v1/forget-requests", json=body(seed=0, method="lobotomy"), headers=headers),
        lambda: _jobs_of_kind(client, "forget"),
    )


def _submit_audit(client: TestClient, settings: Settings) -> Operation:
    adapter_id = forget_adapter(client, settings)

    def body(attack: str) -> dict[str, Any]:
        return {"adapter_id": adapter_id, "attacks": [{"name": attack}]}

    attacks = ["quantize", "relearn"]
    return Operation(
        202,
        lambda headers, variant: client.post("/v1/audits", json=body(attacks[variant]), headers=headers),
        lambda headers: client.post("/v1/audits", json=body("telepathy"), headers=headers),
        lambda: _jobs_of_kind(client, "audit"),
    )


OPERATIONS = {
    "upload_dataset": _upload_dataset,
    "submit_forget_request": _submit_forget_request,
    "submit_audit": _submit_audit,
}


@pytest.fixture(params=list(OPERATIONS))
def operation(request: pytest.FixtureRequest, client: TestClient, stack_settings: Settings) -> Operation:
    return OPERATIONS[request.param](client, stack_settings)


KEY = {"Idempotency-Key": "retry-3f9c2b7e"}


def test_a_retry_replays_the_first_response(operation: Operation) -> None:
    before = operation.created()
    first = operation.send(KEY, 0)
    assert first.status_code == operation.status_code, first.text
    assert "Idempotent-Replayed" not in first.headers
    retry = operation.send(KEY, 0)
    assert retry.status_code == operation.status_code
    assert retry.content == first.content  # the same bytes, not only the same JSON
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert operation.created() == before + 1


def test_the_key_with_another_request_is_409(operation: Operation) -> None:
    before = operation.created()
    assert operation.send(KEY, 0).status_code == operation.status_code
    other = operation.send(KEY, 1)
    assert other.status_code == 409, other.text
    assert other.json()["error"] == "conflict"
    assert "retry-3f9c2b7e" in other.json()["detail"]
    assert operation.created() == before + 1


def test_a_failed_request_stores_no_key(operation: Operation) -> None:
    before = operation.created()
    assert operation.send_bad(KEY).status_code == 422
    # The key is free: the valid request creates, and is no replay.
    created = operation.send(KEY, 1)
    assert created.status_code == operation.status_code, created.text
    assert "Idempotent-Replayed" not in created.headers
    assert operation.created() == before + 1


@pytest.fixture
def slow_key_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request checks the key, creates, then records the key: slowing the step before the record lets
    concurrent requests all pass the check before any commits, so the unique constraint decides."""
    delete_expired = IdempotencyKeyRepository.delete_expired

    def slow_delete_expired(self: IdempotencyKeyRepository, *args: Any) -> None:
        time.sleep(0.5)
        delete_expired(self, *args)

    monkeypatch.setattr(IdempotencyKeyRepository, "delete_expired", slow_delete_expired)


def _assert_created_once(operation: Operation, count: int = 4) -> None:
    before = operation.created()
    responses: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: responses.append(operation.send(KEY, 0))) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [operation.status_code] * count, [r.text for r in responses]
    assert all(r.json() == responses[0].json() for r in responses)
    assert sum(1 for r in responses if "Idempotent-Replayed" not in r.headers) == 1
    assert operation.created() == before + 1


def test_concurrent_requests_with_one_key_create_once(operation: Operation, slow_key_record: None) -> None:
    _assert_created_once(operation)


def test_concurrent_uploads_with_one_key_create_once_on_sqlite(tmp_path: Path, slow_key_record: None) -> None:
    settings = Settings(data_dir=tmp_path)  # the embedded default: SQLite, a local folder, a folder queue
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        api_key = create_key(session, "sqlite-tenant")
    with TestClient(create_app(settings), headers={"X-API-Key": api_key}) as client:
        _assert_created_once(_upload_dataset(client, settings))
        # The requests that lost the race stored their file and deleted it again: one object is left.
        assert len(list((tmp_path / "objects").rglob("*.jsonl"))) == 1


def test_keys_are_scoped_to_the_tenant_and_the_operation(
    client: TestClient, app_client: TestClient, stack_settings: Settings
) -> None:
    forget_id = upload(client, CHOICE_ROWS, name="forget", headers=KEY).json()["id"]
    body = {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": "random_label"}}
    # The upload's key, on another operation: a new request.
    submitted = client.post("/v1/forget-requests", json=body, headers=KEY)
    assert submitted.status_code == 202 and "Idempotent-Replayed" not in submitted.headers
    # Another tenant, the same key and file: its own dataset.
    with session_scope(stack_settings.database_url) as session:
        other_key = create_key(session, f"tenant-{uuid.uuid4().hex[:12]}")
    other = upload(client, CHOICE_ROWS, name="forget", headers={**KEY, "X-API-Key": other_key})
    assert other.status_code == 201 and "Idempotent-Replayed" not in other.headers
    assert other.json()["id"] != forget_id


def test_a_json_body_is_fingerprinted_as_canonical_json(client: TestClient) -> None:
    forget_id = upload(client, CHOICE_ROWS, name="forget").json()["id"]
    compact = f'{{"base_model":"tiny-registered","forget_dataset":"{forget_id}","method":{{"name":"random_label"}}}}'
    spaced = (
        f'{{ "method": {{ "name": "random_label" }},\n "forget_dataset": "{forget_id}", '
        '"base_model": "tiny-registered" }'
    )
    headers = {**KEY, "Content-Type": "application/json"}
    first = client.post("/v1/forget-requests", content=compact, headers=headers)
    retry = client.post("/v1/forget-requests", content=spaced, headers=headers)
    assert first.status_code == retry.status_code == 202
    assert retry.json() == first.json() and retry.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("key", ["x" * 201, "has space", ""])
def test_a_bad_key_is_422_naming_the_header(client: TestClient, key: str) -> None:
    response = upload(client, CHOICE_ROWS, headers={"Idempotency-Key": key})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("Idempotency-Key:")
    assert client.get("/v1/datasets").json()["items"] == []


def test_a_key_expires(stack_settings: Settings, api_key: str) -> None:
    settings = stack_settings.model_copy(update={"idempotency_ttl_s": 0.0})
    with TestClient(create_app(settings), headers={"X-API-Key": api_key}) as client:
        first = upload(client, CHOICE_ROWS, headers=KEY)
        again = upload(client, CHOICE_ROWS, headers=KEY)
    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers and again.json()["id"] != first.json()["id"]
