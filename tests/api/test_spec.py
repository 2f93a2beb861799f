"""Tests generated from the OpenAPI spec, so that a new route is covered without a new test: schemathesis over every
operation, and a two-tenant matrix over every route with an `{id}`."""

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.app import create_app
from api.services.auth import create_key
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AdapterRepository, AuditRepository, JobRepository, WorkerRepository
from models.tables import utcnow
from storage import open_store
from storage.keys import adapter_key, per_example_key, report_key
from tests.api.conftest import CHOICE_ROWS, RETAIN_ROWS, forget_adapter, upload

# --- schemathesis over the whole spec -------------------------------------------------------------------------------

# The committed spec, which tests/api/test_service.py keeps equal to the code's.
schema = schemathesis.openapi.from_dict(json.loads((Path(__file__).resolve().parents[2] / "openapi.json").read_text()))


@pytest.fixture(scope="module")
def spec_app(app_client: TestClient, stack_settings: Settings) -> Iterator[FastAPI]:
    """An app of its own: the checks probe auth with wrong keys by the hundred, which the failed-key rate limit
    (tested in test_gate.py) would turn into 429s here and, on the shared app, for the tests after this one."""
    settings = stack_settings.model_copy(update={"auth_failure_limit": 1_000_000})
    with TestClient(create_app(settings)) as client:
        yield client.app  # type: ignore[misc]


@schema.parametrize()
# Bounded and derandomized: the same examples on every run, about 25 per operation.
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_to_the_spec(
    case: Any, spec_app: FastAPI, api_key: str, stack_settings: Settings
) -> None:
    """No 5xx; status codes, content types, headers and bodies as the spec declares them; auth enforced."""
    # An undeclared query parameter is ignored, as HTTP APIs (and OpenAPI, whose query is no closed object) allow;
    # schemathesis's negative mode counts one as invalid data that must be refused: such cases prove nothing here.
    declared = {parameter.name for parameter in case.operation.query}
    assume(not set(case.query or {}) - declared)
    # Sent to the app over ASGI (on the suite's PostgreSQL, S3 server and Redis), the checks' probes too.
    case.operation.app = case.operation.schema.app = spec_app
    case.operation.schema.location = "/openapi.json"
    with session_scope(stack_settings.database_url) as session:
        WorkerRepository(session).beat("spec-test:1", utcnow())  # so /readyz is ready, not 503
    # A schema-valid body may name a dataset or adapter that does not exist: a 422 naming that field is right.
    case.call_and_validate(headers={"X-API-Key": api_key}, excluded_checks=[positive_data_acceptance])


# --- two tenants, every route with an {id} ----------------------------------------------------------------------------


def _dataset(client: TestClient, _settings: Settings) -> str:
    return str(upload(client, CHOICE_ROWS).json()["id"])


def _job(client: TestClient, settings: Settings) -> str:
    """A queued forget job of the tenant, with per-example values stored (as if it had run once)."""
    body = {
        "base_model": "tiny-registered",
        "forget_dataset": upload(client, CHOICE_ROWS, name="forget").json()["id"],
        "retain_datasets": [upload(client, RETAIN_ROWS, name="retain").json()["id"]],
        "method": {"name": "random_label"},
    }
    job_id = client.post("/v1/forget-requests", json=body).json()["job_id"]
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(uuid.UUID(job_id))
        assert job is not None
        key = per_example_key(job.tenant_id, job.id)
        evidence = b'{"forgotten": {}}'
        open_store(settings).put(key, evidence)
        claim = JobRepository(session).claim(job.id, utcnow())
        assert claim is not None
        JobRepository(session).set_evidence(claim, key, len(evidence))
    return job_id


def _adapter(client: TestClient, settings: Settings) -> str:
    """An adapter of the tenant's succeeded forget job, with its archive stored."""
    adapter_id = forget_adapter(client, settings)
    with session_scope(settings.database_url) as session:
        adapter = AdapterRepository(session).get_any_tenant(uuid.UUID(adapter_id))
        assert adapter is not None
        adapter.object_key = adapter_key(adapter.tenant_id, adapter.id)
        open_store(settings).put(adapter.object_key, b"\x1f\x8b the archive")
    return adapter_id


def _audit(client: TestClient, settings: Settings) -> str:
    """An audit of the tenant's adapter, with both its reports stored."""
    audit_id = client.post("/v1/audits", json={"adapter_id": _adapter(client, settings)}).json()["audit_id"]
    with session_scope(settings.database_url) as session:
        audit = AuditRepository(session).get_any_tenant(uuid.UUID(audit_id))
        assert audit is not None
        audit.report_key = report_key(audit.tenant_id, audit.id, "json")
        audit.report_html_key = report_key(audit.tenant_id, audit.id, "html")
        open_store(settings).put(audit.report_key, b'{"report": {}, "signature": {}}')
        open_store(settings).put(audit.report_html_key, b"<html></html>")
    return audit_id


def _deletion(client: TestClient, settings: Settings) -> str:
    """A deletion of the tenant's (of a dataset), with its receipt."""
    return str(client.delete(f"/v1/datasets/{_dataset(client, settings)}").json()["receipt"]["id"])


# How to make an object of one tenant for each path parameter the spec has: a new `{id}` route needs one here.
CREATORS: dict[str, Callable[[TestClient, Settings], str]] = {
    "dataset_id": _dataset,
    "job_id": _job,
    "adapter_id": _adapter,
    "audit_id": _audit,
    "deletion_id": _deletion,
}


def _id_operations(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, parameter) of every tenant's operation whose path has an `{id}`-like parameter (the
    installation's, with the admin scope, belong to no tenant: tests/api/test_api_keys.py)."""
    return [
        (method, path, parameter)
        for path, path_item in spec["paths"].items()
        for parameter in re.findall(r"\{(\w+)\}", path)
        for method, operation in path_item.items()
        if not any(
            "admin" in scopes for requirement in operation.get("security", []) for scopes in requirement.values()
        )
    ]


def test_another_tenants_key_on_every_id_route_is_404_and_changes_nothing(
    app_client: TestClient, client: TestClient, stack_settings: Settings
) -> None:
    operations = _id_operations(app_client.app.openapi())  # type: ignore[attr-defined]
    assert len(operations) >= 8
    uncovered = sorted({f"{m.upper()} {p}" for m, p, parameter in operations if parameter not in CREATORS})
    assert not uncovered, f"no way to create the object of {uncovered}: add its parameter to CREATORS"
    ids = {parameter: CREATORS[parameter](client, stack_settings) for parameter in {p for _, _, p in operations}}
    owner_key = client.headers["X-API-Key"]
    with session_scope(stack_settings.database_url) as session:
        stranger_key = create_key(session, f"stranger-{uuid.uuid4().hex[:8]}")

    def url(path: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)

    def owners_view() -> dict[str, tuple[int, bytes]]:
        lists = [("get", f"/v1/{name}") for name in ("jobs", "datasets", "adapters", "audits", "deletions")]
        reads = [(m, p) for m, p, _ in operations if m == "get"] + lists
        responses = {p: app_client.get(url(p), headers={"X-API-Key": owner_key}) for _, p in reads}
        return {p: (r.status_code, r.content) for p, r in responses.items()}

    before = owners_view()
    assert {p: status for p, (status, _) in before.items()} == dict.fromkeys(before, 200)
    for method, path, _ in operations:
        response = app_client.request(method.upper(), url(path), headers={"X-API-Key": stranger_key})
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"] == "not_found" and set(response.json()) == {"error", "detail"}
    assert owners_view() == before
