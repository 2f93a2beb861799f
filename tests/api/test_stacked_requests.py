"""Stacked forget requests: `parent_adapter` must be the tenant's adapter on the same base model with the same
LoRA shape, or the request is refused naming why and nothing is written; an adapter shows its lineage."""

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.services.auth import create_key
from api.services.base_models import register_base_model
from lethe.settings import Settings
from lethe.specs import ForgetJobSpec, MethodChoice
from models.db import session_scope
from models.repositories import AdapterRepository, BaseModelRepository, JobRepository
from models.tables import Adapter, Job
from tests.api.conftest import CHOICE_ROWS, RETAIN_ROWS, tenant_of, upload


@pytest.fixture
def four_blocks(stack_settings: Settings, tmp_path: Path) -> str:
    """A base model of known depth (4 decoder blocks; no weights: the API never loads them)."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    with session_scope(stack_settings.database_url) as session:
        register_base_model(session, "stack-four-blocks", f"path:{tmp_path}", "stacked request checks")
    return "stack-four-blocks"


def _adapter(
    client: TestClient,
    settings: Settings,
    base_model: str = "tiny-registered",
    method: dict[str, Any] | None = None,
    parent: str | None = None,
) -> str:
    """A succeeded forget job's adapter row of the client's tenant (no weights: the API never reads them)."""
    forget = upload(client, CHOICE_ROWS, name="parent-forget").json()["id"]
    method = method or {"name": "random_label", "params": {}}
    with session_scope(settings.database_url) as session:
        source = BaseModelRepository(session).get_by_name(base_model)
        assert source is not None
        spec = ForgetJobSpec(
            base_model=base_model,
            base_model_source=source.source,
            forget_dataset=uuid.UUID(forget),
            retain_datasets=[],
            heldout_fraction=0.2,
            finetune=None,
            method=MethodChoice(**method),
            probe=False,
            general_text_perplexity=False,
            seed=0,
            parent_adapter=uuid.UUID(parent) if parent else None,
        )
        tenant_id = tenant_of(settings, forget)
        job = JobRepository(session).add(
            Job(
                tenant_id=tenant_id,
                kind="forget",
                status="succeeded",
                stage="done",
                progress=1.0,
                spec=spec.model_dump(mode="json"),
            )
        )
        adapter = AdapterRepository(session).add(
            Adapter(
                tenant_id=tenant_id,
                job_id=job.id,
                base_model=base_model,
                object_key="adapters/none.tar.gz",
                sha256="0" * 64,
                size_bytes=0,
                parent_adapter_id=uuid.UUID(parent) if parent else None,
            )
        )
        return str(adapter.id)


def _request(client: TestClient, parent: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "base_model": "tiny-registered",
        "forget_dataset": upload(client, CHOICE_ROWS, name="child-forget").json()["id"],
        "retain_datasets": [upload(client, RETAIN_ROWS, name="retain").json()["id"]],
        "method": {"name": "gradient_ascent", "params": {}},
        "probe": False,
        "parent_adapter": parent,
    }
    return body | overrides


def _refused(client: TestClient, body: dict[str, Any], detail: str) -> None:
    jobs = len(client.get("/v1/jobs").json()["items"])
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 422, response.text
    assert response.json() == {"error": "invalid_input", "detail": detail}
    assert len(client.get("/v1/jobs").json()["items"]) == jobs  # nothing written


def test_a_request_stacked_on_the_tenants_adapter_is_queued_with_its_parent(
    client: TestClient, stack_settings: Settings
) -> None:
    parent = _adapter(client, stack_settings)
    # Another method than the parent's is fine: only the LoRA's shape must match.
    response = client.post("/v1/forget-requests", json=_request(client, parent))
    assert response.status_code == 202, response.text
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(uuid.UUID(response.json()["job_id"]))
        assert job is not None and job.spec["parent_adapter"] == parent


def test_a_missing_or_foreign_parent_is_not_found(
    client: TestClient, app_client: TestClient, stack_settings: Settings
) -> None:
    missing = str(uuid.uuid4())
    _refused(client, _request(client, missing), f"parent_adapter: adapter {missing} not found")
    # Another tenant's adapter reads exactly as a missing one.
    theirs = _adapter(client, stack_settings)
    with session_scope(stack_settings.database_url) as session:
        app_client.headers["X-API-Key"] = create_key(session, f"stranger-{uuid.uuid4().hex[:8]}")
    _refused(app_client, _request(app_client, theirs), f"parent_adapter: adapter {theirs} not found")


def test_a_parent_on_another_base_model_is_refused(client: TestClient, stack_settings: Settings, four_blocks) -> None:
    parent = _adapter(client, stack_settings, base_model=four_blocks)
    body = _request(client, parent)
    _refused(
        client,
        body,
        f"parent_adapter: adapter {parent} was trained on base model 'stack-four-blocks' "
        f"(path:{_source_dir(stack_settings, four_blocks)}), not on 'tiny-registered' (path:/nonexistent/tiny); "
        "a stacked request continues its parent on the same base model",
    )


def _source_dir(settings: Settings, name: str) -> str:
    with session_scope(settings.database_url) as session:
        base_model = BaseModelRepository(session).get_by_name(name)
        assert base_model is not None
        return base_model.source.removeprefix("path:")


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        (
            {"lora_rank": 4},
            "method.params.lora_rank: 4 differs from the parent adapter's 8; a stacked request continues its "
            "parent's LoRA, so they must be equal",
        ),
        (
            {"lora_alpha": 32},
            "method.params.lora_alpha: 32 differs from the parent adapter's 16; a stacked request continues its "
            "parent's LoRA, so they must be equal",
        ),
    ],
)
def test_a_lora_rank_or_alpha_other_than_the_parents_is_refused(
    client: TestClient, stack_settings: Settings, params: dict, detail: str
) -> None:
    parent = _adapter(client, stack_settings)
    _refused(client, _request(client, parent, method={"name": "gradient_ascent", "params": params}), detail)


def test_lora_layers_other_than_the_parents_are_refused(
    client: TestClient, stack_settings: Settings, four_blocks: str
) -> None:
    parent = _adapter(client, stack_settings, base_model=four_blocks)
    rmu = {"name": "rmu", "params": {"layer": 3}}  # LoRA on blocks 1..3 (Li et al.)
    _refused(
        client,
        _request(client, parent, base_model=four_blocks, method=rmu),
        "method.params: LoRA on decoder blocks [1, 2, 3], the parent adapter's on every block; a stacked request "
        "continues its parent's LoRA, so they must be equal",
    )
    rmu_parent = _adapter(client, stack_settings, base_model=four_blocks, method=rmu)
    accepted = client.post("/v1/forget-requests", json=_request(client, rmu_parent, base_model=four_blocks, method=rmu))
    assert accepted.status_code == 202, accepted.text


def test_an_adapter_shows_its_parent_and_lineage_up_to_the_root(client: TestClient, stack_settings: Settings) -> None:
    root = _adapter(client, stack_settings)
    middle = _adapter(client, stack_settings, parent=root)
    leaf = _adapter(client, stack_settings, parent=middle)

    shown = {a: client.get(f"/v1/adapters/{a}").json() for a in (root, middle, leaf)}
    assert (shown[root]["parent_adapter_id"], shown[root]["lineage"]) == (None, [])
    assert (shown[middle]["parent_adapter_id"], shown[middle]["lineage"]) == (root, [root])
    assert (shown[leaf]["parent_adapter_id"], shown[leaf]["lineage"]) == (middle, [middle, root])
