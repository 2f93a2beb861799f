"""Cursor pagination and filters of the list routes: whole walks without loss or duplicates, ties, inserts between
pages, filters, and 422s naming the parameter."""

import uuid
from datetime import datetime, timedelta

from fastapi.testclient import TestClient

from api.services.auth import create_key
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AuditRepository, JobRepository
from models.tables import Job, utcnow
from tests.api.conftest import CHOICE_ROWS, forget_adapter, tenant_of, upload
from tests.conftest import forget_job_spec


def _walk(client: TestClient, path: str, limit: int, **params: str) -> list[dict]:
    """Every item of a list, page by page; checks each page's size."""
    items: list[dict] = []
    cursor: str | None = None
    while True:
        query = {"limit": str(limit), **params, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit  # only the last page is short


def _add_jobs(
    settings: Settings,
    tenant_id: uuid.UUID,
    dataset_id: str,
    count: int,
    start: datetime | None = None,
    **fields: object,
) -> list[str]:
    """`count` jobs of the tenant written straight to the catalogue, three per second from `start` (a day ago by
    default): ties in created_at that only the id orders."""
    spec = forget_job_spec(uuid.UUID(dataset_id)).model_dump(mode="json")
    start = start or utcnow() - timedelta(days=1)
    values = {"kind": "forget", "status": "succeeded", "stage": "done", "progress": 1.0, **fields}
    with session_scope(settings.database_url) as session:
        jobs = [
            JobRepository(session).add(
                Job(tenant_id=tenant_id, spec=spec, created_at=start + timedelta(seconds=n // 3), **values)
            )
            for n in range(count)
        ]
        return [str(job.id) for job in jobs]


def test_a_walk_over_130_jobs_returns_each_once_newest_first_with_inserts_between_pages(
    client: TestClient, stack_settings: Settings
) -> None:
    dataset_id = upload(client, CHOICE_ROWS).json()["id"]
    tenant_id = tenant_of(stack_settings, dataset_id)
    created = _add_jobs(stack_settings, tenant_id, dataset_id, 130)

    first = client.get("/v1/jobs", params={"limit": 40}).json()
    assert len(first["items"]) == 40 and first["next_cursor"]
    # Jobs created between two pages are newer than the cursor: they never shift or repeat the pages that follow.
    _add_jobs(stack_settings, tenant_id, dataset_id, 5, start=utcnow())
    rest = []
    cursor = first["next_cursor"]
    while cursor:
        page = client.get("/v1/jobs", params={"limit": 40, "cursor": cursor}).json()
        rest += page["items"]
        cursor = page["next_cursor"]
    walked = [job["id"] for job in first["items"] + rest]
    assert len(walked) == len(set(walked)) == 130
    assert set(walked) == set(created)
    keys = [(job["created_at"], uuid.UUID(job["id"])) for job in first["items"] + rest]
    assert keys == sorted(keys, reverse=True)

    assert len(_walk(client, "/v1/jobs", 200)) == 135  # more than the 100 the old list stopped at
    assert len(client.get("/v1/jobs").json()["items"]) == 50  # the default limit


def test_filters_by_status_kind_and_created_range(client: TestClient, stack_settings: Settings) -> None:
    dataset_id = upload(client, CHOICE_ROWS).json()["id"]
    tenant_id = tenant_of(stack_settings, dataset_id)
    day = utcnow().replace(microsecond=0) - timedelta(days=3)
    succeeded = _add_jobs(stack_settings, tenant_id, dataset_id, 4, start=day)  # day + 0 s, 0 s, 0 s, 1 s
    failed = _add_jobs(stack_settings, tenant_id, dataset_id, 3, start=day + timedelta(days=1), status="failed")
    audits = _add_jobs(stack_settings, tenant_id, dataset_id, 2, start=day + timedelta(days=2), kind="audit")

    def ids(**params: str) -> set[str]:
        return {job["id"] for job in _walk(client, "/v1/jobs", 2, **params)}

    assert ids(status="failed") == set(failed)
    assert ids(kind="audit") == set(audits)
    assert ids(status="succeeded", kind="forget") == set(succeeded)
    assert ids(status="queued") == set()
    # The created range is half-open: [created_after, created_before).
    one_second = (day + timedelta(seconds=1)).isoformat()
    assert ids(created_before=day.isoformat()) == set()
    assert ids(created_after=day.isoformat(), created_before=one_second) == set(succeeded[:3])
    assert ids(created_after=one_second, created_before=(day + timedelta(days=1)).isoformat()) == {succeeded[3]}
    assert ids(created_after=(day + timedelta(days=1)).isoformat(), kind="forget") == set(failed)
    assert ids(created_after=utcnow().isoformat()) == set()

    datasets = _walk(client, "/v1/datasets", 1, kind="choice")
    assert [d["id"] for d in datasets] == [dataset_id]
    assert _walk(client, "/v1/datasets", 1, kind="qa") == []


def test_adapters_and_audits_are_listed_with_their_filters(client: TestClient, stack_settings: Settings) -> None:
    adapter_ids = [forget_adapter(client, stack_settings, with_retain=False) for _ in range(3)]
    listed = _walk(client, "/v1/adapters", 2)
    assert [a["id"] for a in listed] == adapter_ids[::-1]
    assert set(listed[0]) == {"id", "job_id", "base_model", "sha256", "size_bytes", "parent_adapter_id", "created_at"}
    assert _walk(client, "/v1/adapters", 2, base_model="another") == []

    audit_ids = [client.post("/v1/audits", json={"adapter_id": a}).json()["audit_id"] for a in adapter_ids[:2]]
    with session_scope(stack_settings.database_url) as session:
        audit = AuditRepository(session).get_any_tenant(uuid.UUID(audit_ids[0]))
        assert audit is not None
        audit.verdict = "robust"
        JobRepository(session).finish(audit.job_id, "succeeded", utcnow())
    listed_audits = _walk(client, "/v1/audits", 1)
    assert [a["id"] for a in listed_audits] == audit_ids[::-1]
    assert listed_audits[1]["status"] == "succeeded" and listed_audits[1]["verdict"] == "robust"
    assert [a["id"] for a in _walk(client, "/v1/audits", 5, status="queued")] == [audit_ids[1]]
    assert [a["id"] for a in _walk(client, "/v1/audits", 5, verdict="robust")] == [audit_ids[0]]
    assert [a["id"] for a in _walk(client, "/v1/audits", 5, adapter_id=adapter_ids[1])] == [audit_ids[1]]


def test_another_tenants_rows_are_never_listed(
    client: TestClient, app_client: TestClient, stack_settings: Settings
) -> None:
    forget_adapter(client, stack_settings)
    with session_scope(stack_settings.database_url) as session:
        stranger = {"X-API-Key": create_key(session, f"stranger-{uuid.uuid4().hex[:8]}")}
    for path in ("/v1/datasets", "/v1/jobs", "/v1/adapters", "/v1/audits"):
        assert app_client.get(path, headers=stranger).json() == {"items": [], "next_cursor": None}, path


def test_bad_cursor_limit_and_filters_are_422_naming_the_parameter(client: TestClient) -> None:
    def detail(path: str, **params: str) -> str:
        response = client.get(path, params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"] == "invalid_input"
        return str(response.json()["detail"])

    for cursor in ("not-a-cursor", "W10", "eyJhIjogMX0", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwieCJd"):
        assert detail("/v1/jobs", cursor=cursor).startswith("cursor: not a cursor this API issued")
    assert detail("/v1/jobs", limit="0").startswith("limit:")
    assert detail("/v1/jobs", limit="201").startswith("limit:")
    status_detail = detail("/v1/jobs", status="done")
    assert status_detail.startswith("status:") and "'queued'" in status_detail and "'cancelled'" in status_detail
    assert "'forget'" in detail("/v1/jobs", kind="training")
    assert "'choice'" in detail("/v1/datasets", kind="images")
    assert "'robust'" in detail("/v1/audits", verdict="deep")
    assert detail("/v1/adapters", created_after="yesterday").startswith("created_after:")
    assert detail("/v1/audits", created_before="2026-01-01T00:00:00").startswith("created_before:")  # no time zone
    assert detail(
        "/v1/datasets", created_after="2026-02-01T00:00:00Z", created_before="2026-01-01T00:00:00Z"
    ).startswith("created_after: must be earlier than created_before")
