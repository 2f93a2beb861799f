"""The request gate (api/gate.py): key, failed-key rate limit, Content-Type and size, all before the body is read;
and every error in the documented `{error, detail}` shape."""

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.gate import MULTIPART_ENVELOPE_BYTES, AuthFailures
from lethe.settings import Settings
from tests.api.conftest import CHOICE_ROWS, jsonl, upload

MiB = 1024 * 1024


@dataclass
class Exchange:
    """A request sent straight to the ASGI app, body in chunks, and what came back."""

    chunks_read: int = 0
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def call(
    app: FastAPI, method: str, path: str, headers: dict[str, str], chunks: list[bytes], client: str = "203.0.113.7"
) -> Exchange:
    """Send the body chunk by chunk (no Content-Length unless `headers` has one), counting the chunks the app reads."""
    exchange = Exchange()

    async def receive() -> dict[str, Any]:
        if exchange.chunks_read == len(chunks):
            return {"type": "http.disconnect"}
        exchange.chunks_read += 1
        more = exchange.chunks_read < len(chunks)
        return {"type": "http.request", "body": chunks[exchange.chunks_read - 1], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            exchange.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": (client, 40000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return exchange


def _error(exchange: Exchange) -> str:
    import json

    body = json.loads(exchange.body)
    assert set(body) == {"error", "detail"}, body
    return str(body["error"])


def _multipart(content: bytes) -> tuple[dict[str, str], bytes, bytes]:
    """Headers, the opening (name, kind and the file part's headers) and the closing of an upload."""
    boundary = "lethe-test-boundary"
    opening = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\nchoice\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return {"content-type": f"multipart/form-data; boundary={boundary}"}, opening, f"\r\n--{boundary}--\r\n".encode()


def test_an_unauthenticated_request_is_refused_before_its_body_is_read(app_client: TestClient) -> None:
    app = app_client.app
    headers, opening, _ = _multipart(b"")
    for key in ({}, {"x-api-key": "lethe_wrong"}):
        upload_attempt = call(app, "POST", "/v1/datasets", {**headers, **key}, [opening] + [b"x" * MiB] * 80)
        assert (upload_attempt.status, _error(upload_attempt), upload_attempt.chunks_read) == (401, "unauthorized", 0)
        json_attempt = call(app, "POST", "/v1/forget-requests", {"content-type": "application/json", **key}, [b"{}"])
        assert (json_attempt.status, json_attempt.chunks_read) == (401, 0)


def test_a_declared_oversized_body_is_413_before_it_is_read(
    app_client: TestClient, api_key: str, stack_settings: Settings
) -> None:
    app = app_client.app
    headers, opening, _ = _multipart(b"")
    too_big = stack_settings.max_upload_bytes + MULTIPART_ENVELOPE_BYTES + 1
    upload_attempt = call(
        app, "POST", "/v1/datasets", {**headers, "x-api-key": api_key, "content-length": str(too_big)}, [opening]
    )
    assert (upload_attempt.status, _error(upload_attempt), upload_attempt.chunks_read) == (413, "payload_too_large", 0)
    assert "LETHE_MAX_UPLOAD_BYTES" in upload_attempt.body.decode()
    json_headers = {"content-type": "application/json", "x-api-key": api_key, "content-length": str(MiB + 1)}
    json_attempt = call(app, "POST", "/v1/forget-requests", json_headers, [b"{}"])
    assert (json_attempt.status, _error(json_attempt), json_attempt.chunks_read) == (413, "payload_too_large", 0)
    assert "LETHE_MAX_JSON_BYTES" in json_attempt.body.decode()


def test_a_chunked_json_body_is_cut_off_at_the_limit(app_client: TestClient, api_key: str) -> None:
    chunks = [b'{"seed": 1, "pad": "'] + [b"x" * (256 * 1024)] * 8 + [b'"}']
    exchange = call(
        app_client.app,
        "POST",
        "/v1/forget-requests",
        {"content-type": "application/json", "x-api-key": api_key},
        chunks,
    )
    assert (exchange.status, _error(exchange)) == (413, "payload_too_large")
    assert exchange.chunks_read == 5  # the 1 MiB limit is passed in the fifth chunk; the rest is never read


def test_a_chunked_upload_is_cut_off_at_the_limit_and_stores_nothing(
    app_client: TestClient, api_key: str, client: TestClient, stack_settings: Settings
) -> None:
    headers, opening, closing = _multipart(b"")
    file_chunks = [b"x" * MiB] * (stack_settings.max_upload_bytes // MiB + 10)
    exchange = call(
        app_client.app, "POST", "/v1/datasets", {**headers, "x-api-key": api_key}, [opening, *file_chunks, closing]
    )
    assert (exchange.status, _error(exchange)) == (413, "payload_too_large")
    assert exchange.chunks_read < len(file_chunks)
    assert client.get("/v1/datasets").json()["items"] == []


def test_an_unsupported_content_type_is_415_and_writes_nothing(client: TestClient) -> None:
    as_text = client.post("/v1/forget-requests", content=b"{}", headers={"content-type": "text/plain"})
    assert as_text.status_code == 415
    assert as_text.json() == {
        "error": "unsupported_media_type",
        "detail": "Content-Type: this route takes application/json, got text/plain",
    }
    assert client.post("/v1/forget-requests", content=b"{}", headers={"content-type": ""}).status_code == 415
    as_json = client.post("/v1/datasets", json={"name": "x", "kind": "choice"})
    assert as_json.status_code == 415
    assert as_json.json()["detail"] == "Content-Type: this route takes multipart/form-data, got application/json"
    assert client.get("/v1/jobs").json()["items"] == [] and client.get("/v1/datasets").json()["items"] == []


def test_failed_keys_are_rate_limited_per_address(stack_settings: Settings, api_key: str) -> None:
    settings = stack_settings.model_copy(update={"auth_failure_limit": 3, "auth_failure_window_s": 60.0})
    app = create_app(settings)
    guesser = TestClient(app, client=("198.51.100.1", 1234))
    neighbour = TestClient(app, client=("198.51.100.2", 1234))
    for _ in range(2):
        assert guesser.get("/v1/jobs", headers={"X-API-Key": "lethe_guess"}).status_code == 401
    assert guesser.get("/v1/jobs", headers={"X-API-Key": api_key}).status_code == 200  # two failures: not blocked yet
    assert guesser.get("/v1/jobs", headers={"X-API-Key": "lethe_guess"}).status_code == 401
    blocked = guesser.get("/v1/jobs", headers={"X-API-Key": api_key})  # a right key tells a guesser nothing now
    assert blocked.status_code == 429
    assert blocked.json()["error"] == "too_many_failed_keys"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert neighbour.get("/v1/jobs", headers={"X-API-Key": api_key}).status_code == 200
    # Missing keys guess nothing and are not counted; public routes stay open to a blocked address.
    assert neighbour.get("/v1/jobs").status_code == 401
    assert guesser.get("/healthz").status_code == 200


def test_failures_leave_the_window() -> None:
    now = [0.0]
    failures = AuthFailures(limit=2, window_s=10.0, clock=lambda: now[0])
    failures.record("a")
    now[0] = 5.0
    assert failures.retry_after_s("a") is None
    failures.record("a")
    now[0] = 6.0
    assert failures.retry_after_s("a") == 4  # the failure at 0 s leaves the window at 10 s
    now[0] = 10.5
    assert failures.retry_after_s("a") is None


def test_public_routes_are_open_and_unknown_ones_need_a_key(app_client: TestClient, api_key: str) -> None:
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert app_client.get(path, headers={"X-API-Key": ""}).status_code == 200, path
    unknown = app_client.get("/v1/nothing-here", headers={"X-API-Key": ""})
    assert (unknown.status_code, unknown.json()["error"]) == (401, "unauthorized")
    known_key = {"X-API-Key": api_key}
    assert app_client.get("/v1/nothing-here", headers=known_key).json() == {"error": "not_found", "detail": "Not Found"}
    wrong_method = app_client.delete("/v1/datasets", headers=known_key)
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {
        "error": "method_not_allowed",
        "detail": "DELETE /v1/datasets: allowed are GET, HEAD, POST",
    }
    assert wrong_method.headers["allow"] == "GET, HEAD, POST"
    assert app_client.delete("/v1/datasets", headers={"X-API-Key": ""}).status_code == 401


def test_malformed_bodies_are_400_in_the_documented_shape(client: TestClient) -> None:
    json_headers = {"content-type": "application/json"}
    truncated = client.post("/v1/forget-requests", content=b'{"seed": ', headers=json_headers)
    assert truncated.status_code == 400
    assert truncated.json() == {
        "error": "malformed_body",
        "detail": "body: not valid JSON (Expecting value at line 1, column 10)",
    }
    latin1 = client.post("/v1/forget-requests", content='{"base_model": "é"}'.encode("latin-1"), headers=json_headers)
    assert latin1.json() == {"error": "malformed_body", "detail": "body: not UTF-8 (byte 16)"}
    no_boundary = client.post("/v1/datasets", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert (no_boundary.status_code, no_boundary.json()["error"]) == (400, "malformed_body")
    assert set(no_boundary.json()) == {"error", "detail"}
    assert client.get("/v1/jobs").json()["items"] == [] and client.get("/v1/datasets").json()["items"] == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"seed": ' + b"9" * 5000 + b"}", "seed: integer has 5000 digits (at most 20)"),
        (
            b'{"method": {"name": "npo", "params": {"x": ' + b"[" * 40 + b"]" * 40 + b"}}}",
            # The body is level 1, method 2, params 3, x 4: its 29th nested list is the 33rd level.
            "method.params.x" + "[0]" * 29 + ": nested deeper than 32 levels",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "body: nested deeper than 32 levels (column 33)"),
        (b'{"method": {"name": "npo\\u0000"}}', "method.name: contains a NUL character (\\u0000)"),
        (b'{"base_model": "smol\\udc00"}', "base_model: contains a lone surrogate (\\udc00) at character 4"),
        (b'{"heldout_fraction": NaN}', "heldout_fraction: NaN is not a JSON number"),
    ],
)
def test_json_a_request_cannot_hold_is_422_naming_the_field(client: TestClient, body: bytes, detail: str) -> None:
    response = client.post("/v1/forget-requests", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"error": "invalid_input", "detail": detail}
    assert client.get("/v1/jobs").json()["items"] == []


def test_an_unhandled_error_is_a_logged_500_in_the_documented_shape(
    app_client: TestClient, api_key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("connection string postgres://secret@db")

    monkeypatch.setattr("api.services.jobs.list_jobs", broken)
    lenient = TestClient(app_client.app, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="lethe.api"):
        response = lenient.get("/v1/jobs", headers={"X-API-Key": api_key})
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "an unexpected error occurred; it has been logged"}
    assert "secret" not in response.text
    [record] = [r for r in caplog.records if r.name == "lethe.api"]
    assert record.getMessage() == "unhandled error in GET /v1/jobs"
    assert record.exc_info is not None and "postgres://secret@db" in str(record.exc_info[1])


def test_an_upload_within_the_limits_still_passes_the_gate(client: TestClient) -> None:
    response = upload(client, jsonl(CHOICE_ROWS))
    assert response.status_code == 201, response.text
