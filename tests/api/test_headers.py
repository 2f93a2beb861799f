"""Headers clients and browsers act on: `Location` of what a POST created, `nosniff` on every response, and the
audit report's formats with the HTML page's Content-Security-Policy."""

import uuid

import pytest
from fastapi.testclient import TestClient

from api.routes.audits import REPORT_CSP
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AuditRepository
from storage import open_store
from storage.keys import report_key
from tests.api.conftest import CHOICE_ROWS, forget_adapter, upload

SIGNED = b'{"report": {"verdict": "robust"}, "signature": {"value": "00"}}'
PAGE = b"<!DOCTYPE html><html><head><title>report</title></head><body></body></html>"


def test_location_of_an_upload_is_the_dataset(client: TestClient) -> None:
    response = upload(client, CHOICE_ROWS)
    assert response.status_code == 201
    location = response.headers["Location"]
    assert location == f"/v1/datasets/{response.json()['id']}"
    assert client.get(location).json() == response.json()


def test_location_of_a_forget_request_is_its_job(client: TestClient) -> None:
    body = {"base_model": "tiny-registered", "forget_dataset": upload(client, CHOICE_ROWS).json()["id"]}
    response = client.post("/v1/forget-requests", json=body | {"method": {"name": "random_label"}})
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['job_id']}"
    assert client.get(response.headers["Location"]).json()["status"] == "queued"


def _audit_with_reports(client: TestClient, settings: Settings) -> str:
    """An audit whose JSON and HTML reports are stored (as a worker leaves them); its Location checked on the way."""
    response = client.post("/v1/audits", json={"adapter_id": forget_adapter(client, settings)})
    assert response.status_code == 202, response.text
    audit_id = response.json()["audit_id"]
    assert response.headers["Location"] == f"/v1/audits/{audit_id}"
    assert client.get(response.headers["Location"]).json()["id"] == audit_id
    store = open_store(settings)
    with session_scope(settings.database_url) as session:
        audit = AuditRepository(session).get_any_tenant(uuid.UUID(audit_id))
        assert audit is not None
        audit.report_key = report_key(audit.tenant_id, audit.id, "json")
        audit.report_html_key = report_key(audit.tenant_id, audit.id, "html")
        store.put(audit.report_key, SIGNED)
        store.put(audit.report_html_key, PAGE)
    return audit_id


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/report", {}, SIGNED),
        ("/report?format=json", {"Accept": "text/html"}, SIGNED),
        ("/report?format=html", {}, PAGE),
        ("/report", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, PAGE),  # a browser's
        ("/report.html", {}, PAGE),
    ],
)
def test_report_formats_and_their_headers(
    client: TestClient, stack_settings: Settings, path: str, headers: dict[str, str], body: bytes
) -> None:
    audit_id = _audit_with_reports(client, stack_settings)
    response = client.get(f"/v1/audits/{audit_id}{path}", headers=headers)
    assert response.status_code == 200 and response.content == body
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if body == PAGE:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == REPORT_CSP
        assert response.headers["Content-Disposition"] == f'inline; filename="lethe-audit-{audit_id}.html"'
    else:
        assert response.headers["Content-Type"] == "application/json"
        assert "Content-Security-Policy" not in response.headers


def test_an_unknown_report_format_is_named(client: TestClient, stack_settings: Settings) -> None:
    audit_id = _audit_with_reports(client, stack_settings)
    response = client.get(f"/v1/audits/{audit_id}/report?format=pdf")
    assert response.status_code == 422
    assert response.json() == {"error": "invalid_input", "detail": "format: must be json or html, got 'pdf'"}


def test_the_report_policy_allows_only_the_page_itself() -> None:
    directives = dict(d.strip().partition(" ")[::2] for d in REPORT_CSP.split(";"))
    assert directives["default-src"] == "'none'"  # no script, font, frame, connection, ...
    assert directives["img-src"] == "data:" and directives["style-src"] == "'unsafe-inline'"
    assert "sandbox" in directives and directives["frame-ancestors"] == "'none'"


def test_every_response_says_nosniff(app_client: TestClient, client: TestClient) -> None:
    """Routes, error handlers and the gate's own answers (no key: 401 before any route runs)."""
    responses = [
        app_client.get("/healthz"),
        app_client.get("/openapi.json"),
        app_client.get("/v1/datasets", headers={"X-API-Key": ""}),
        client.get("/v1/datasets"),
        client.get(f"/v1/jobs/{uuid.uuid4()}"),
        client.get("/v1/no-such-route"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 200, 404, 404]
    assert all(r.headers["X-Content-Type-Options"] == "nosniff" for r in responses)
