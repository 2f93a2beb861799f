"""When the broker cannot be reached: readiness says so, and a submitted job fails instead of hanging queued."""

import uuid

from fastapi.testclient import TestClient

from api.app import create_app
from api.services.auth import create_key
from api.services.base_models import register_base_model
from lethe.settings import Settings
from models.db import session_scope
from tests.api.conftest import CHOICE_ROWS, forget_adapter, upload
from tests.conftest import free_port


def test_submit_with_the_broker_down_is_503_and_the_job_is_failed(stack_settings: Settings) -> None:
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # a loopback port nothing listens on
    settings = stack_settings.model_copy(update={"broker_url": dead_broker})
    with session_scope(settings.database_url) as session:
        key = create_key(session, f"broker-down-{uuid.uuid4().hex[:8]}")
        register_base_model(session, "tiny-registered", "path:/nonexistent/tiny", "validation tests only")
    with TestClient(create_app(settings), headers={"X-API-Key": key}) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["catalogue"] == "ok" and ready.json()["checks"]["broker"] != "ok"

        forget_id = upload(client, CHOICE_ROWS).json()["id"]
        body = {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": "random_label"}}
        response = client.post("/v1/forget-requests", json=body)
        assert response.status_code == 503
        assert response.json()["error"] == "service_unavailable"
        [job] = client.get("/v1/jobs").json()["items"]
        assert job["status"] == "failed"
        assert client.get(f"/v1/jobs/{job['id']}").json()["error"]["code"] == "broker_unavailable"


def test_an_audit_with_the_broker_down_is_503_and_its_job_is_failed(stack_settings: Settings) -> None:
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    settings = stack_settings.model_copy(update={"broker_url": dead_broker})
    with session_scope(settings.database_url) as session:
        key = create_key(session, f"broker-down-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings), headers={"X-API-Key": key}) as client:
        adapter_id = forget_adapter(client, settings)
        response = client.post("/v1/audits", json={"adapter_id": adapter_id, "attacks": [{"name": "quantize"}]})
        assert response.status_code == 503
        [job] = [j for j in client.get("/v1/jobs").json()["items"] if j["kind"] == "audit"]
        assert job["status"] == "failed"
        assert client.get(f"/v1/jobs/{job['id']}").json()["error"]["code"] == "broker_unavailable"


def test_a_refused_job_stores_no_idempotency_key(stack_settings: Settings) -> None:
    settings = stack_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with session_scope(settings.database_url) as session:
        key = create_key(session, f"broker-down-{uuid.uuid4().hex[:8]}")
        register_base_model(session, "tiny-registered", "path:/nonexistent/tiny", "validation tests only")
    with TestClient(create_app(settings), headers={"X-API-Key": key}) as client:
        forget_id = upload(client, CHOICE_ROWS).json()["id"]
        body = {"base_model": "tiny-registered", "forget_dataset": forget_id, "method": {"name": "random_label"}}
        headers = {"Idempotency-Key": "refused-once"}
        # The client got a 503, not the 202 the key was stored with: its retry must try again, not replay a 202.
        assert client.post("/v1/forget-requests", json=body, headers=headers).status_code == 503
        assert client.post("/v1/forget-requests", json=body, headers=headers).status_code == 503
        assert [job["status"] for job in client.get("/v1/jobs").json()["items"]] == ["failed", "failed"]
