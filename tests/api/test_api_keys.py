"""API-key scopes enforced by the request gate, and the admin API that lists, creates, revokes and rotates keys."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.deps import TenantDep, WritingTenantDep
from api.services.auth import authenticate, create_key, record_use
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import ApiKeyRepository
from models.tables import utcnow
from tests.api.conftest import CHOICE_ROWS, upload
from tests.api.test_gate import _error, call


def _key(settings: Settings, *scopes: str, tenant: str | None = None) -> str:
    with session_scope(settings.database_url) as session:
        return create_key(session, tenant or f"scopes-{uuid.uuid4().hex[:10]}", scopes)


@pytest.fixture
def admin(app_client: TestClient, stack_settings: Settings) -> TestClient:
    """The session's app (started already) with a key that holds only the admin scope."""
    return TestClient(app_client.app, headers={"X-API-Key": _key(stack_settings, "admin", tenant="operators")})


def _as(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def _forbidden(response: Any, detail: str) -> None:
    assert (response.status_code, response.json()) == (403, {"error": "forbidden", "detail": detail}), response.text


# --- scopes in the gate ---------------------------------------------------------------------------------------------


def test_a_read_key_reads_and_cannot_write_before_its_body_is_read(
    app_client: TestClient, stack_settings: Settings
) -> None:
    tenant = f"scopes-{uuid.uuid4().hex[:10]}"
    reader, writer = _key(stack_settings, "read", tenant=tenant), _key(stack_settings, "submit", tenant=tenant)
    needs_submit = "X-API-Key: this operation needs the submit scope; this key has read"
    assert app_client.get("/v1/datasets", headers=_as(reader)).status_code == 200
    _forbidden(upload(app_client, CHOICE_ROWS, headers=_as(reader)), needs_submit)
    body = {"base_model": "tiny-registered", "forget_dataset": str(uuid.uuid4()), "method": {"name": "random_label"}}
    _forbidden(app_client.post("/v1/forget-requests", json=body, headers=_as(reader)), needs_submit)
    _forbidden(app_client.post(f"/v1/jobs/{uuid.uuid4()}/cancel", headers=_as(reader)), needs_submit)
    # Refused before the body is read: no chunk of it is received, and a declared size past every limit is not what
    # answers.
    headers = {"content-type": "application/json", "x-api-key": reader, "content-length": str(10**12)}
    attempt = call(app_client.app, "POST", "/v1/audits", headers, [b"{}"])  # type: ignore[arg-type]
    assert (attempt.status, _error(attempt), attempt.chunks_read) == (403, "forbidden", 0)

    # The same tenant's submit key writes, and reads nothing.
    uploaded = upload(app_client, CHOICE_ROWS, headers=_as(writer))
    assert uploaded.status_code == 201, uploaded.text
    needs_read = "X-API-Key: this operation needs the read scope; this key has submit"
    _forbidden(app_client.get(f"/v1/datasets/{uploaded.json()['id']}", headers=_as(writer)), needs_read)
    listed = app_client.get("/v1/datasets", headers=_as(reader)).json()["items"]
    assert [d["id"] for d in listed] == [uploaded.json()["id"]]


def test_admin_operations_refuse_tenant_keys_and_admin_reads_no_tenant(
    app_client: TestClient, admin: TestClient, api_key: str
) -> None:
    for method, path in [("GET", "/v1/api-keys"), ("POST", f"/v1/api-keys/{uuid.uuid4()}/revoke")]:
        response = app_client.request(method, path, headers=_as(api_key))
        assert response.status_code == 403, (method, path)
        assert response.json()["detail"].startswith(
            "X-API-Key: this operation needs the admin scope; this key has read, submit (an operator gets an admin "
            "key by setting LETHE_ADMIN_API_KEY"
        )
    _forbidden(admin.get("/v1/jobs"), "X-API-Key: this operation needs the read scope; this key has admin")
    _forbidden(upload(admin, CHOICE_ROWS), "X-API-Key: this operation needs the submit scope; this key has admin")
    assert admin.get("/v1/api-keys").status_code == 200
    # A wrong method on a keyed path is a 405 for any valid key, whatever its scopes.
    assert admin.delete("/v1/datasets").status_code == 405


def test_a_route_added_later_gets_its_scope_from_its_method(stack_settings: Settings) -> None:
    app = create_app(stack_settings)

    @app.get("/v1/widgets/{widget_id}")
    def get_widget(widget_id: str, tenant_id: TenantDep) -> dict[str, str]:
        return {"widget": widget_id, "tenant": str(tenant_id)}

    @app.delete("/v1/widgets/{widget_id}")
    def delete_widget(widget_id: str, tenant_id: WritingTenantDep) -> dict[str, str]:
        return {"deleted": widget_id}

    operations = app.openapi()["paths"]["/v1/widgets/{widget_id}"]
    assert operations["get"]["security"] == [{"APIKeyHeader": ["read"]}]
    assert operations["delete"]["security"] == [{"APIKeyHeader": ["submit"]}]
    assert "lacks the submit scope" in operations["delete"]["responses"]["403"]["description"]
    client = TestClient(app)  # no lifespan: only the gate and the routes are exercised
    tenant = f"widgets-{uuid.uuid4().hex[:8]}"
    reader, writer = _key(stack_settings, "read", tenant=tenant), _key(stack_settings, "submit", tenant=tenant)
    assert client.get("/v1/widgets/w1", headers=_as(reader)).status_code == 200
    assert client.delete("/v1/widgets/w1", headers=_as(reader)).status_code == 403
    assert client.delete("/v1/widgets/w1", headers=_as(writer)).json() == {"deleted": "w1"}


def test_every_keyed_operation_declares_its_scope_and_its_403(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"APIKeyHeader"}
    scopes = {}
    for path, path_item in spec["paths"].items():
        for method, operation in path_item.items():
            if "security" not in operation:
                continue
            [requirement] = operation["security"]
            [(scheme, [scope])] = requirement.items()
            scopes[f"{method.upper()} {path}"] = scope
            assert scope in operation["responses"]["403"]["description"], (method, path)
    assert scopes["GET /v1/jobs"] == "read" and scopes["POST /v1/forget-requests"] == "submit"
    assert scopes["POST /v1/base-models"] == scopes["POST /v1/api-keys/{key_id}/rotate"] == "admin"
    assert {scope for operation, scope in scopes.items() if operation.startswith(("GET", "HEAD"))} <= {"read", "admin"}
    assert {scope for operation, scope in scopes.items() if operation.startswith("POST")} <= {"submit", "admin"}


# --- the admin API --------------------------------------------------------------------------------------------------


def test_an_admin_creates_a_key_shown_once_and_lists_it_without_its_hash(admin: TestClient) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    created = admin.post("/v1/api-keys", json={"tenant": tenant, "scopes": ["read", "read"], "name": "dashboards"})
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("lethe_") and body["prefix"] == key[:12]
    assert (body["tenant"], body["scopes"], body["name"], body["status"]) == (tenant, ["read"], "dashboards", "active")
    assert body["last_used_at"] is None and body["revoked_at"] is None

    assert admin.get("/v1/datasets", headers={"X-API-Key": key}).status_code == 200
    assert upload(admin, CHOICE_ROWS, headers={"X-API-Key": key}).status_code == 403
    page = admin.get("/v1/api-keys", params={"tenant": tenant}).json()
    [listed] = page["items"]
    assert page["next_cursor"] is None
    assert set(listed) == set(body) - {"key"}
    assert listed["id"] == body["id"] and listed["last_used_at"] is not None
    assert key not in admin.get("/v1/api-keys", params={"tenant": tenant}).text
    assert admin.get("/v1/api-keys", params={"tenant": "no-such-tenant"}).json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"tenant": "t", "scopes": ["write"]}, "scopes.0: Input should be 'read', 'submit' or 'admin'"),
        ({"tenant": "t", "scopes": []}, "scopes: List should have at least 1 item after validation, not 0"),
        ({"tenant": "no spaces", "scopes": ["read"]}, "tenant: String should match pattern"),
        ({"tenant": "t", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at: 2020-01-01T00:00:00+00:00 is not in"),
        ({"tenant": "t", "expires_at": "2099-01-01T00:00:00"}, "expires_at: Input should have timezone info"),
    ],
)
def test_a_bad_key_request_is_a_422_naming_the_field(admin: TestClient, body: dict[str, Any], detail: str) -> None:
    response = admin.post("/v1/api-keys", json=body)
    assert (response.status_code, response.json()["error"]) == (422, "invalid_input")
    assert response.json()["detail"].startswith(detail), response.json()["detail"]


def test_keys_are_listed_a_page_at_a_time_newest_first(admin: TestClient) -> None:
    tenant = f"paged-{uuid.uuid4().hex[:8]}"
    made = [admin.post("/v1/api-keys", json={"tenant": tenant, "name": f"k{n}"}).json()["id"] for n in range(5)]
    first = admin.get("/v1/api-keys", params={"tenant": tenant, "limit": 2}).json()
    second = admin.get("/v1/api-keys", params={"tenant": tenant, "limit": 2, "cursor": first["next_cursor"]}).json()
    third = admin.get("/v1/api-keys", params={"tenant": tenant, "limit": 2, "cursor": second["next_cursor"]}).json()
    assert third["next_cursor"] is None
    assert [k["id"] for page in (first, second, third) for k in page["items"]] == made[::-1]
    bad = admin.get("/v1/api-keys", params={"cursor": "not-a-cursor"})
    assert (bad.status_code, bad.json()["detail"]) == (
        422,
        "cursor: not a cursor this server issued (pass `next_cursor` of the previous page)",
    )
    admin.post(f"/v1/api-keys/{made[0]}/revoke")
    active = admin.get("/v1/api-keys", params={"tenant": tenant, "status": "active"}).json()["items"]
    revoked = admin.get("/v1/api-keys", params={"tenant": tenant, "status": "revoked"}).json()["items"]
    assert [k["id"] for k in active] == made[:0:-1] and [k["id"] for k in revoked] == [made[0]]


def test_a_revoked_key_is_refused_and_revoking_twice_changes_nothing(admin: TestClient) -> None:
    created = admin.post("/v1/api-keys", json={"tenant": f"rev-{uuid.uuid4().hex[:8]}"}).json()
    assert admin.get("/v1/jobs", headers={"X-API-Key": created["key"]}).status_code == 200
    revoked = admin.post(f"/v1/api-keys/{created['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    refused = admin.get("/v1/jobs", headers={"X-API-Key": created["key"]})
    assert refused.status_code == 401 and refused.json()["detail"] == "unknown, revoked or expired API key"
    again = admin.post(f"/v1/api-keys/{created['id']}/revoke").json()
    assert again["revoked_at"] == revoked.json()["revoked_at"]
    missing = admin.post(f"/v1/api-keys/{uuid.uuid4()}/revoke")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


def test_rotating_a_key_replaces_it_now_or_after_a_grace_period(admin: TestClient) -> None:
    tenant = f"rot-{uuid.uuid4().hex[:8]}"
    old = admin.post("/v1/api-keys", json={"tenant": tenant, "scopes": ["submit"], "name": "ci"}).json()
    rotated = admin.post(f"/v1/api-keys/{old['id']}/rotate", json={})
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["key"] != old["key"] and new["id"] != old["id"]
    assert (new["tenant"], new["scopes"], new["name"]) == (tenant, ["submit"], "ci")
    assert upload(admin, CHOICE_ROWS, headers={"X-API-Key": new["key"]}).status_code == 201
    assert upload(admin, CHOICE_ROWS, headers={"X-API-Key": old["key"]}).status_code == 401
    [old_listed] = [
        k for k in admin.get("/v1/api-keys", params={"tenant": tenant}).json()["items"] if k["id"] == old["id"]
    ]
    assert (old_listed["status"], old_listed["replaced_by"]) == ("revoked", new["id"])
    again = admin.post(f"/v1/api-keys/{old['id']}/rotate", json={})
    assert (again.status_code, again.json()["error"]) == (409, "conflict")

    # With a grace period both keys work until it ends; the old one cannot be rotated twice.
    before = datetime.now(UTC)
    graced = admin.post(f"/v1/api-keys/{new['id']}/rotate", json={"grace_s": 3600}).json()
    for key in (new["key"], graced["key"]):
        assert upload(admin, CHOICE_ROWS, headers={"X-API-Key": key}).status_code == 201
    [listed] = [k for k in admin.get("/v1/api-keys", params={"tenant": tenant}).json()["items"] if k["id"] == new["id"]]
    expires_at = datetime.fromisoformat(listed["expires_at"])
    assert before + timedelta(seconds=3600) <= expires_at <= datetime.now(UTC) + timedelta(seconds=3600)
    assert (listed["status"], listed["replaced_by"]) == ("active", graced["id"])
    twice = admin.post(f"/v1/api-keys/{new['id']}/rotate", json={"grace_s": 60})
    assert twice.status_code == 409 and f"already rotated; its replacement is {graced['id']}" in twice.json()["detail"]
    too_long = admin.post(f"/v1/api-keys/{graced['id']}/rotate", json={"grace_s": 31 * 24 * 3600})
    assert too_long.status_code == 422 and too_long.json()["detail"].startswith("grace_s:")


def test_an_expired_key_is_refused(stack_settings: Settings, app_client: TestClient, admin: TestClient) -> None:
    created = admin.post(
        "/v1/api-keys", json={"tenant": f"exp-{uuid.uuid4().hex[:8]}", "expires_at": "2099-01-01T00:00:00Z"}
    ).json()
    assert app_client.get("/v1/jobs", headers={"X-API-Key": created["key"]}).status_code == 200
    with session_scope(stack_settings.database_url) as session:
        row = ApiKeyRepository(session).get(uuid.UUID(created["id"]))
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert app_client.get("/v1/jobs", headers={"X-API-Key": created["key"]}).status_code == 401
    listed = admin.get("/v1/api-keys", params={"tenant": created["tenant"], "status": "expired"}).json()["items"]
    assert [k["id"] for k in listed] == [created["id"]]


def test_a_keys_use_is_recorded_at_most_once_a_minute(stack_settings: Settings) -> None:
    key = _key(stack_settings, "read")
    start = utcnow()

    def used_at(now: datetime) -> datetime | None:
        """The key's recorded use after a request at `now`, as the request gate records it."""
        with session_scope(stack_settings.database_url) as session:
            authenticated = authenticate(session, key, now)
        if authenticated.use_unrecorded(now):
            with session_scope(stack_settings.database_url) as session:
                record_use(session, authenticated, now)
        with session_scope(stack_settings.database_url) as session:
            row = ApiKeyRepository(session).get(authenticated.id)
            assert row is not None
            return row.last_used_at

    assert used_at(start) == start
    assert used_at(start + timedelta(seconds=59)) == start
    assert used_at(start + timedelta(seconds=61)) == start + timedelta(seconds=61)


# --- the keys of the settings ---------------------------------------------------------------------------------------


def test_the_settings_keys_are_ensured_and_a_revocation_survives_a_restart(stack_settings: Settings) -> None:
    admin_key, bootstrap_key = f"admin-{uuid.uuid4().hex}", f"bootstrap-{uuid.uuid4().hex}"
    settings = stack_settings.model_copy(
        update={"admin_api_key": SecretStr(admin_key), "bootstrap_api_key": SecretStr(bootstrap_key)}
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers={"X-API-Key": bootstrap_key}).status_code == 200
        assert client.get("/v1/api-keys", headers={"X-API-Key": bootstrap_key}).status_code == 403
        page = client.get("/v1/api-keys", params={"tenant": "default", "limit": 200}, headers={"X-API-Key": admin_key})
        mine = {k["name"]: k for k in page.json()["items"] if k["prefix"] in (admin_key[:12], bootstrap_key[:12])}
        assert (mine["LETHE_ADMIN_API_KEY"]["scopes"], mine["LETHE_BOOTSTRAP_API_KEY"]["scopes"]) == (
            ["admin"],
            ["read", "submit"],
        )
        admin_id = mine["LETHE_ADMIN_API_KEY"]["id"]
        assert client.post(f"/v1/api-keys/{admin_id}/revoke", headers={"X-API-Key": admin_key}).status_code == 200
        assert client.get("/v1/api-keys", headers={"X-API-Key": admin_key}).status_code == 401
    with TestClient(create_app(settings)) as restarted:
        assert restarted.get("/v1/api-keys", headers={"X-API-Key": admin_key}).status_code == 401
