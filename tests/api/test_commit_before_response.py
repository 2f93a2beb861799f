"""Every mutation is committed before its response starts: a client that reads right after sees it."""

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobRepository, PageQuery
from tests.api.conftest import CHOICE_ROWS, tenant_of, upload


def _spying(client: TestClient, look: Callable[[], Any], seen: list[Any]) -> TestClient:
    """A client of the same app that calls `look()` (from its own session) when the response starts."""
    app = client.app

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        async def send_and_look(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen.append(look())
            await send(message)

        await app(scope, receive, send_and_look)

    return TestClient(spy, headers=client.headers)


def _job_status(settings: Settings, job_id: str) -> str | None:
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(uuid.UUID(job_id))
        return job.status if job else None


def test_cancel_is_committed_before_its_response(client: TestClient, stack_settings: Settings) -> None:
    forget_id = upload(client, CHOICE_ROWS).json()["id"]
    body = {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": "random_label"}}
    job_id = client.post("/v1/forget-requests", json=body).json()["job_id"]
    seen: list[Any] = []
    spying = _spying(client, lambda: _job_status(stack_settings, job_id), seen)
    assert spying.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert seen == ["cancelled"]


def test_a_submitted_job_is_committed_before_its_response(client: TestClient, stack_settings: Settings) -> None:
    forget_id = upload(client, CHOICE_ROWS).json()["id"]
    body = {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": "random_label"}}
    tenant_id = tenant_of(stack_settings, forget_id)

    def statuses() -> list[str]:
        with session_scope(stack_settings.database_url) as session:
            return [job.status for job in JobRepository(session).page(tenant_id, PageQuery(limit=200))]

    seen: list[Any] = []
    assert _spying(client, statuses, seen).post("/v1/forget-requests", json=body).status_code == 202
    assert seen == [["queued"]]
