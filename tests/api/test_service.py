"""Auth, health, the published registries and the committed OpenAPI spec."""

import inspect
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import delete

from api.routes import adapters, audits, datasets, health, jobs, registries
from cli.openapi import current_spec
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import WorkerRepository
from models.tables import Worker, utcnow

ROOT = Path(__file__).resolve().parents[2]


def test_every_v1_route_requires_a_key(app_client: TestClient) -> None:
    for path in ["/v1/datasets", "/v1/jobs", "/v1/base-models", "/v1/methods", "/v1/metrics"]:
        response = app_client.get(path, headers={"X-API-Key": ""})
        assert response.status_code == 401, path
        assert response.json()["error"] == "unauthorized"
        assert app_client.get(path, headers={"X-API-Key": "lethe_wrong"}).status_code == 401


def test_health_and_readiness(app_client: TestClient, stack_settings: Settings) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    with session_scope(stack_settings.database_url) as session:
        session.execute(delete(Worker))  # no worker process runs in these tests
    unready = app_client.get("/readyz")
    assert unready.status_code == 503
    checks = unready.json()["checks"]
    assert {name: checks[name] for name in ("catalogue", "broker", "storage")} == dict.fromkeys(
        ("catalogue", "broker", "storage"), "ok"
    )
    assert checks["worker"].startswith("RuntimeError: no worker has beaten in the last 120 s")

    # A worker whose last beat is older than the heartbeat timeout counts as gone; one that beat just now is alive.
    with session_scope(stack_settings.database_url) as session:
        WorkerRepository(session).beat("host:1", utcnow() - timedelta(seconds=stack_settings.heartbeat_timeout_s + 1))
    assert app_client.get("/readyz").status_code == 503
    with session_scope(stack_settings.database_url) as session:
        WorkerRepository(session).beat("host:1", utcnow())
    ready = app_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"catalogue": "ok", "broker": "ok", "storage": "ok", "worker": "ok"}


def test_base_models_include_bundled_smollm2(client: TestClient) -> None:
    names = [b["name"] for b in client.get("/v1/base-models").json()]
    assert "smollm2-135m-instruct" in names


def test_methods_publish_json_schema_with_defaults(client: TestClient) -> None:
    methods = {m["name"]: m for m in client.get("/v1/methods").json()}
    assert list(methods) == ["gradient_ascent", "random_label", "grad_diff", "npo", "simnpo", "idk", "rmu", "lwf"]
    assert methods["random_label"]["kinds"] == ["choice"]
    assert methods["npo"]["kinds"] == ["choice", "qa", "text"]
    assert methods["npo"]["params"]["properties"]["beta"]["default"] == 0.1
    for method in methods.values():
        properties = method["params"]["properties"]
        assert {"learning_rate", "epochs", "max_steps", "batch_size", "lora_rank"} <= properties.keys()
        assert all("default" in p for p in properties.values())
        assert method["description"]
    # LWF is reconstructed from the paper's abstract and summaries: published as experimental, saying what.
    assert [name for name, m in methods.items() if m["experimental"]] == ["lwf"]
    assert "Reconstructed by Lethe" in methods["lwf"]["reconstructed"]
    assert all(m["reconstructed"] is None for name, m in methods.items() if name != "lwf")
    assert methods["lwf"]["params"]["properties"]["top_fraction"]["default"] == 0.5
    assert "never unlearned" in methods["lwf"]["description"]


def test_metrics_publish_their_definitions(client: TestClient) -> None:
    metrics = {m["name"]: m for m in client.get("/v1/metrics").json()}
    families = {m["family"] for m in metrics.values()}
    assert {"choice", "qa", "text", "privacy", "probe"} <= families
    assert metrics["truth_ratio"]["kinds"] == ["qa"]
    assert metrics["mia_auc_min_k_plus_plus"]["higher_means"] == "remembers"
    assert all(m["description"] for m in metrics.values())
    # Each says which 95% interval its values carry.
    assert (metrics["accuracy"]["interval"], metrics["forget_ratio"]["interval"]) == ("wilson", "paired_bootstrap")
    assert metrics["perplexity"]["interval"] == "bootstrap"
    assert {m["interval"] for m in metrics.values()} <= {"wilson", "bootstrap", "paired_bootstrap", "none"}


def test_committed_openapi_matches_code() -> None:
    assert (ROOT / "openapi.json").read_text() == current_spec(), "run `make openapi` and commit openapi.json"


def test_operation_ids_read_well_and_errors_are_declared() -> None:
    spec = json.loads(current_spec())
    operations = {op["operationId"]: op for path in spec["paths"].values() for op in path.values()}
    assert {"submit_forget_request", "upload_dataset", "get_job", "download_adapter"} <= operations.keys()
    for operation_id, operation in operations.items():
        if operation_id not in ("health", "ready", "list_signing_keys"):
            # The request gate answers these before the route runs (api/gate.py); those three are public.
            assert {"401", "429"} <= operation["responses"].keys(), operation_id
        if "requestBody" in operation:
            assert {"400", "413", "415", "422"} <= operation["responses"].keys(), operation_id


def test_the_api_does_not_import_torch() -> None:
    code = "import sys, api.app; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_only_healthz_runs_on_the_event_loop() -> None:
    # Every other route reads the catalogue or the store, which block: as a plain `def` FastAPI runs it in its
    # threadpool (and iterates a streamed object there too); an `async def` would hold the event loop, /healthz
    # included. /healthz does no I/O, so it runs on the loop itself, where a full threadpool cannot hold it up.
    on_the_loop = [
        route.path
        for module in (adapters, audits, datasets, health, jobs, registries)
        for route in module.router.routes
        if isinstance(route, APIRoute) and inspect.iscoroutinefunction(route.endpoint)
    ]
    assert on_the_loop == ["/healthz"]
