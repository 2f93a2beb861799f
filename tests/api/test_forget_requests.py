import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.services.base_models import register_base_model
from lethe.methods import METHODS
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import JobEventRepository, JobRepository
from tests.api.conftest import CHOICE_ROWS, RETAIN_ROWS, upload


def _request(client: TestClient, **overrides: Any) -> dict[str, Any]:
    forget = upload(client, CHOICE_ROWS, name="forget").json()["id"]
    retain = upload(client, RETAIN_ROWS, name="retain").json()["id"]
    body = {
        "base_model": "tiny-registered",
        "forget_dataset": forget,
        "retain_datasets": [retain],
        "heldout_fraction": 0.5,
        "finetune": {"epochs": 1, "learning_rate": 0.001},
        "method": {"name": "random_label", "params": {"learning_rate": 0.0005}},
        "probe": True,
        "seed": 3,
    }
    body.update(overrides)
    return body


def test_submit_creates_queued_job_with_normalized_spec(client: TestClient, stack_settings: Settings) -> None:
    response = client.post("/v1/forget-requests", json=_request(client))
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.json()["status"] == "queued"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["metrics"] == [] and job["adapter_id"] is None
    assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == [job_id]
    with session_scope(stack_settings.database_url) as session:
        row = JobRepository(session).get_any_tenant(uuid.UUID(job_id))
        assert row is not None
        # Defaults of the method are filled in, so the job is reproducible from its spec alone.
        assert row.spec["method"]["params"]["learning_rate"] == 0.0005
        assert "batch_size" in row.spec["method"]["params"]
        assert [e.type for e in JobEventRepository(session).list(row.id)] == ["queued"]


def test_unknown_method_is_named(client: TestClient) -> None:
    response = client.post("/v1/forget-requests", json=_request(client, method={"name": "lobotomy"}))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("method.name: unknown method 'lobotomy' (allowed: ")
    assert "random_label" in detail and "gradient_ascent" in detail


def test_bad_method_params_are_named(client: TestClient) -> None:
    body = _request(client, method={"name": "gradient_ascent", "params": {"learning_rate": -1, "colour": 1}})
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "method.params.learning_rate" in detail
    assert "method.params.colour" in detail


def test_method_must_support_the_forget_kind(client: TestClient) -> None:
    passages = upload(client, [{"text": "One passage."}, {"text": "Another passage."}], name="p", kind="text")
    body = _request(client, forget_dataset=passages.json()["id"])
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 422
    assert response.json()["detail"] == "method.name: random_label cannot forget text rows (it supports: choice)"
    body["method"] = {"name": "gradient_ascent"}
    assert client.post("/v1/forget-requests", json=body).status_code == 202


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_can_be_requested_with_its_defaults(client: TestClient, method: str) -> None:
    response = client.post("/v1/forget-requests", json=_request(client, method={"name": method}))
    assert response.status_code == 202, response.text


def test_a_method_that_trains_on_retain_needs_a_retain_set(client: TestClient) -> None:
    body = _request(client, retain_datasets=[], method={"name": "npo"})
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("retain_datasets: npo with these params trains on retain data")
    body["method"] = {"name": "npo", "params": {"alpha": 0}}
    assert client.post("/v1/forget-requests", json=body).status_code == 202


def test_utility_floor_needs_a_retain_set(client: TestClient) -> None:
    body = _request(client, retain_datasets=[], method={"name": "gradient_ascent", "params": {"utility_floor": 0.05}})
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("method.params.utility_floor: needs at least one retain dataset")


def test_unknown_base_model_and_foreign_dataset(client: TestClient) -> None:
    response = client.post("/v1/forget-requests", json=_request(client, base_model="gpt-99"))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("base_model: unknown base model 'gpt-99' (available: ")
    response = client.post("/v1/forget-requests", json=_request(client, forget_dataset=str(uuid.uuid4())))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("forget_dataset: dataset ")


def test_heldout_fraction_must_leave_both_splits(client: TestClient) -> None:
    response = client.post("/v1/forget-requests", json=_request(client, heldout_fraction=0.01))
    assert response.status_code == 422
    assert response.json()["detail"].startswith("heldout_fraction:")
    response = client.post("/v1/forget-requests", json=_request(client, heldout_fraction=1.5))
    assert response.status_code == 422
    assert "heldout_fraction" in response.json()["detail"]


def test_invalid_request_creates_no_job(client: TestClient) -> None:
    client.post("/v1/forget-requests", json=_request(client, method={"name": "nope"}))
    assert client.get("/v1/jobs").json()["items"] == []


def test_other_tenants_job_is_404(client: TestClient, app_client: TestClient, stack_settings: Settings) -> None:
    job_id = client.post("/v1/forget-requests", json=_request(client)).json()["job_id"]
    from api.services.auth import create_key

    with session_scope(stack_settings.database_url) as session:
        other_key = create_key(session, "another-tenant-jobs")
    assert app_client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": other_key}).status_code == 404
    assert app_client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404


def test_a_retain_set_equal_to_the_forget_set_is_refused(client: TestClient) -> None:
    body = _request(client)
    same_id = client.post("/v1/forget-requests", json={**body, "retain_datasets": [body["forget_dataset"]]})
    assert same_id.status_code == 422
    assert same_id.json()["detail"] == (
        f"retain_datasets[0]: dataset {body['forget_dataset']} is the forget dataset; a retain set must differ from it"
    )
    copy = upload(client, CHOICE_ROWS, name="forget-again").json()["id"]
    same_content = client.post(
        "/v1/forget-requests", json={**body, "retain_datasets": [body["retain_datasets"][0], copy]}
    )
    assert same_content.status_code == 422
    assert same_content.json()["detail"] == (
        f"retain_datasets[1]: dataset {copy} has the same content as the forget dataset; a retain set must differ "
        "from it"
    )
    assert client.get("/v1/jobs").json()["items"] == []


@pytest.fixture
def four_block_base_model(stack_settings: Settings, tmp_path: Path) -> str:
    """A base model whose checkpoint's config.json says it has 4 decoder blocks (no weights: the API never loads)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    with session_scope(stack_settings.database_url) as session:
        register_base_model(session, "four-blocks", f"path:{tmp_path}", "layer checks only")
    return "four-blocks"


@pytest.mark.parametrize(
    ("method", "detail"),
    [
        (
            {"name": "npo", "params": {"rna_noise_std": 0.1, "rna_layer": 1000}},
            "method.params.rna_layer: base model four-blocks has 4 decoder blocks, so a layer is 0..3, got 1000",
        ),
        (
            {"name": "rmu", "params": {"layer": 4}},
            "method.params.layer: base model four-blocks has 4 decoder blocks, so a layer is 0..3, got 4",
        ),
        (
            {"name": "rmu", "params": {"trained_layers": [1, 9]}},
            "method.params.trained_layers[1]: base model four-blocks has 4 decoder blocks, so a layer is 0..3, got 9",
        ),
    ],
)
def test_a_layer_the_base_model_lacks_is_named_with_the_range(
    client: TestClient, four_block_base_model: str, method: dict, detail: str
) -> None:
    response = client.post(
        "/v1/forget-requests", json=_request(client, base_model=four_block_base_model, method=method)
    )
    assert response.status_code == 422
    assert response.json() == {"error": "invalid_input", "detail": detail}
    assert client.get("/v1/jobs").json()["items"] == []


def test_layers_within_the_base_model_and_of_unknown_depth_are_accepted(
    client: TestClient, four_block_base_model: str
) -> None:
    method = {"name": "rmu", "params": {"layer": 3, "trained_layers": [2, 3]}}
    body = _request(client, base_model=four_block_base_model, method=method)
    assert client.post("/v1/forget-requests", json=body).status_code == 202
    # tiny-registered's checkpoint is not readable here: its depth is unknown, and the worker checks the layer.
    body = _request(client, base_model="tiny-registered", method={"name": "rmu", "params": {"layer": 999}})
    assert client.post("/v1/forget-requests", json=body).status_code == 202


def test_an_audit_layer_the_base_model_lacks_is_named(client: TestClient, four_block_base_model: str) -> None:
    audit = {"attacks": [{"name": "patch", "params": {"layers": [7, 1]}}]}
    body = _request(client, base_model=four_block_base_model, audit=audit)
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "audit.attacks[0].params.layers: base model four-blocks has 4 decoder blocks, so a layer is 0..3, got 7"
    )
