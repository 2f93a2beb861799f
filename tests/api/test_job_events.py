"""GET /v1/jobs/{id}/events: the SSE stream read by a real HTTP client (httpx + httpx-sse) from a real uvicorn, and
the JSON page. The job's events are written as a worker writes them (`run_job`, `ProgressReporter`)."""

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx_sse import ServerSentEvent, connect_sse

from api.app import create_app
from api.services.auth import authenticate, create_key
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobEventRepository, JobRepository
from models.tables import utcnow
from tests.conftest import forget_job_spec, free_port, wait_for
from worker.engine.metrics.values import CurvePoint
from worker.pipelines.jobs import ProgressReporter, held_claim, run_job

SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def live(stack_settings: Settings) -> Iterator[tuple[str, FastAPI]]:
    """A real uvicorn serving the app on a loopback port, with a short poll and keep-alive; (base URL, app)."""
    settings = stack_settings.model_copy(update={"events_poll_interval_s": 0.05, "events_keepalive_s": 0.3})
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, timeout_s=30), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=30)
    assert not thread.is_alive(), "uvicorn did not stop (a stream left open?)"


def _tenant_key(settings: Settings) -> tuple[str, uuid.UUID]:
    with session_scope(settings.database_url) as session:
        key = create_key(session, f"events-{uuid.uuid4().hex[:10]}")
        return key, authenticate(session, key)


def _queued_job(settings: Settings, tenant_id: uuid.UUID) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        return JobRepository(session).create_queued(tenant_id, forget_job_spec(uuid.uuid4())).id


def _run_in_thread(settings: Settings, job_id: uuid.UUID, body: Callable[[], None]) -> threading.Thread:
    """Run the job as a worker would (claim, `running` event, heartbeat) in a thread of its own."""
    thread = threading.Thread(target=run_job, args=(settings, job_id, body), daemon=True)
    thread.start()
    return thread


def _working_body(settings: Settings, job_id: uuid.UUID) -> Callable[[], None]:
    """A job that reports progress and a curve point over about a second, then succeeds."""

    def body() -> None:
        report = ProgressReporter(settings, job_id, min_interval_s=0)
        report("loading", 0.0)
        for step in range(1, 6):
            time.sleep(0.1)
            report("forgetting", step / 10)
        report.curve(CurvePoint("forget_train", "accuracy", 5, 0.25))
        time.sleep(0.1)
        report("evaluating", 1.0)
        with session_scope(settings.database_url) as session:
            attempt = held_claim(job_id).attempt
            payload = {"adapter_id": str(uuid.uuid4()), "steps": 5, "target_reached": True}
            assert JobRepository(session).finish(job_id, "succeeded", utcnow(), payload, attempt=attempt)

    return body


def _read_all(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[ServerSentEvent]:
    with connect_sse(client, "GET", url, headers=dict(headers or {})) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())


def test_the_stream_follows_a_job_to_its_end_and_resumes_after_last_event_id(
    live: tuple[str, FastAPI], stack_settings: Settings
) -> None:
    base_url, _ = live
    key, tenant_id = _tenant_key(stack_settings)
    job_id = _queued_job(stack_settings, tenant_id)
    # A read timeout: a stream that does not end at the job's end fails the test instead of hanging it.
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key, **SSE}, timeout=httpx.Timeout(20.0)) as client:
        worker = _run_in_thread(stack_settings, job_id, _working_body(stack_settings, job_id))
        try:
            events = _read_all(client, f"/v1/jobs/{job_id}/events")  # returns once the server ends the stream
        finally:
            worker.join(timeout=30)

        seqs = [int(e.id) for e in events]
        assert seqs == list(range(1, len(events) + 1))  # every event, in order, once
        types = [e.event for e in events]
        assert types[:2] == ["queued", "running"] and types[-1] == "succeeded"
        assert types.count("succeeded") == 1 and "stage" in types
        bodies = [e.json() for e in events]
        assert [b["seq"] for b in bodies] == seqs and [b["type"] for b in bodies] == types
        progress = [b["data"] for b in bodies if b["type"] == "progress"]
        fractions = [p["fraction"] for p in progress]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) >= 5
        assert progress[0]["curve"] is None
        assert {"split": "forget_train", "name": "accuracy", "step": 5, "value": 0.25} in [p["curve"] for p in progress]
        assert bodies[-1]["data"]["steps"] == 5

        # Resumed after seq 3 (an EventSource's reconnect): only what came later, and the same.
        resumed = _read_all(client, f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "3"})
        assert [(e.id, e.event, e.data) for e in resumed] == [(e.id, e.event, e.data) for e in events[3:]]
        # `after` does the same; Last-Event-ID wins over it.
        assert [int(e.id) for e in _read_all(client, f"/v1/jobs/{job_id}/events?after=5")] == seqs[5:]
        both = _read_all(client, f"/v1/jobs/{job_id}/events?after=1", headers={"Last-Event-ID": str(seqs[-2])})
        assert [e.id for e in both] == [str(seqs[-1])]

        # The JSON page gives the same events.
        page = client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "application/json"}, params={"limit": 200})
        assert [item["seq"] for item in page.json()["items"]] == seqs and page.json()["terminal"] is True


def test_a_quiet_stream_sends_keep_alives_and_stops_when_its_client_leaves(
    live: tuple[str, FastAPI], stack_settings: Settings
) -> None:
    base_url, app = live
    key, tenant_id = _tenant_key(stack_settings)
    job_id = _queued_job(stack_settings, tenant_id)
    streams = app.state.event_streams
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key, **SSE}, timeout=10.0) as client:
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            received: list[str] = []
            started = time.monotonic()
            while received.count(": ping") < 3:
                received.append(next(lines))
            # The queued event, then only keep-alives, one per events_keepalive_s (0.3 s) or so.
            assert [line for line in received if line.startswith("event:")] == ["event: queued"]
            assert time.monotonic() - started >= 0.6
            assert streams.open >= 1
        # The client left (the response is closed): the server's loop ends at its next await.
        assert wait_for(lambda: streams.open == 0, timeout_s=5), f"{streams.open} stream(s) still open"


def test_the_stream_is_behind_the_gate_and_tenant_scoped(live: tuple[str, FastAPI], stack_settings: Settings) -> None:
    base_url, _ = live
    key, tenant_id = _tenant_key(stack_settings)
    other_key, _ = _tenant_key(stack_settings)
    job_id = _queued_job(stack_settings, tenant_id)
    with httpx.Client(base_url=base_url, headers=SSE, timeout=10.0) as client:
        assert client.get(f"/v1/jobs/{job_id}/events").status_code == 401
        other = client.get(f"/v1/jobs/{job_id}/events", headers={"X-API-Key": other_key})
        assert other.status_code == 404 and other.json()["error"] == "not_found"
        bad = client.get(f"/v1/jobs/{job_id}/events", headers={"X-API-Key": key, "Last-Event-ID": "x"})
        assert bad.status_code == 422 and "Last-Event-ID" in bad.text


def test_the_json_page_walks_the_events_with_after_and_limit(app_client: TestClient, stack_settings: Settings) -> None:
    key, tenant_id = _tenant_key(stack_settings)
    job_id = _queued_job(stack_settings, tenant_id)
    headers = {"X-API-Key": key}
    url = f"/v1/jobs/{job_id}/events"

    def body() -> None:
        report = ProgressReporter(stack_settings, job_id, min_interval_s=0)
        report("loading", 0.0)
        report("loading", 0.5)
        page = app_client.get(url, headers=headers, params={"after": 0, "limit": 200}).json()
        # Running: every event so far, and not terminal (more will come).
        assert [item["type"] for item in page["items"]] == ["queued", "running", "stage", "progress", "progress"]
        assert page["terminal"] is False and page["next_after"] == 5

    assert run_job(stack_settings, job_id, body) == "succeeded"
    with session_scope(stack_settings.database_url) as session:
        assert JobRepository(session).fail(job_id, "internal_error", "it broke", utcnow())

    seen, after, pages = [], 0, []
    while True:
        response = app_client.get(url, headers=headers, params={"after": after, "limit": 2})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        page = response.json()
        pages.append(page)
        seen += page["items"]
        after = page["next_after"]
        if page["terminal"]:
            break
        assert len(pages) < 10
    assert [item["seq"] for item in seen] == [1, 2, 3, 4, 5, 6]
    assert [len(p["items"]) for p in pages] == [2, 2, 2] and [p["terminal"] for p in pages] == [False, False, True]
    assert seen[-1]["type"] == "failed"
    assert seen[-1]["data"] == {"error_code": "internal_error", "error_message": "it broke"}
    assert seen[3]["data"] == {"stage": "loading", "fraction": 0.0, "curve": None}
    # Past the end: nothing, `next_after` stays, terminal.
    end = app_client.get(url, headers=headers, params={"after": 6}).json()
    assert end == {"items": [], "next_after": 6, "terminal": True}
    # Without Accept, or preferring JSON: the page, never the stream.
    prefers_json = {**headers, "Accept": "application/json, text/event-stream;q=0.5"}
    assert app_client.get(url, headers=prefers_json).json()["terminal"] is True

    other_key, _ = _tenant_key(stack_settings)
    assert app_client.get(url, headers={"X-API-Key": other_key}).status_code == 404
    assert app_client.get(f"/v1/jobs/{uuid.uuid4()}/events", headers=headers).status_code == 404
    assert app_client.get(url).status_code == 401
    for params in ({"limit": 0}, {"limit": 201}, {"after": -1}):
        assert app_client.get(url, headers=headers, params=params).status_code == 422


def test_an_old_started_event_reads_as_running(app_client: TestClient, stack_settings: Settings) -> None:
    """Rows written before the event names followed the API's (`started`, a failure's {code, message})."""
    key, tenant_id = _tenant_key(stack_settings)
    job_id = _queued_job(stack_settings, tenant_id)
    with session_scope(stack_settings.database_url) as session:
        JobEventRepository(session).append(job_id, "started", {"attempt": 1})
        JobEventRepository(session).append(job_id, "failed", {"code": "stalled", "message": "no progress"})
    items = app_client.get(f"/v1/jobs/{job_id}/events", headers={"X-API-Key": key}).json()["items"]
    assert [(i["type"], i["data"]) for i in items[1:]] == [
        ("running", {"attempt": 1}),
        ("failed", {"error_code": "stalled", "error_message": "no progress"}),
    ]
