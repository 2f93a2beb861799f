"""Base model sources as the catalogue stores them, and the admin key and hub settings."""

import pytest
from pydantic import SecretStr, ValidationError

from lethe.base_model_sources import BaseModelSourceError, HubSource, parse_source, weight_files
from lethe.settings import Settings


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf:org/name", HubSource("org/name", "main")),
        ("hf:org/name@v1.0", HubSource("org/name", "v1.0")),
        ("hf:org/name@refs/pr/1", HubSource("org/name", "refs/pr/1")),
        ("hf:org/name@" + "a" * 40, HubSource("org/name", "a" * 40)),
    ],
)
def test_hub_sources_parse_with_main_by_default(source: str, expected: HubSource) -> None:
    assert parse_source(source).hub == expected
    assert expected.pinned == (expected.revision == "a" * 40)


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("s3://bucket", "unknown scheme 's3'"),
        ("nonsense", "unknown scheme 'nonsense'"),
        ("hf:name-only", "not a hub repository id"),
        ("hf:org/name@../etc", "not a revision"),
        ("hf:org/name@", "not a revision"),
        ("path:relative", "path:/absolute/dir"),
        ("bundled:", "bundled:<id>"),
    ],
)
def test_malformed_sources_are_named(source: str, detail: str) -> None:
    with pytest.raises(BaseModelSourceError, match=detail.replace("(", r"\(")):
        parse_source(source)


def test_the_weight_files_are_the_ones_transformers_loads() -> None:
    assert weight_files(None) == ["model.safetensors"]
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}
    assert weight_files(index) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    with pytest.raises(BaseModelSourceError, match="not a safetensors file beside it"):
        weight_files({"weight_map": {"a": "../elsewhere/model.safetensors"}})
    with pytest.raises(BaseModelSourceError, match="not a safetensors file"):
        weight_files({"weight_map": {"a": "pytorch_model.bin"}})


def test_a_weak_admin_key_is_refused_and_an_empty_one_is_none() -> None:
    with pytest.raises(ValidationError, match="LETHE_ADMIN_API_KEY must be at least 16 characters"):
        Settings(admin_api_key=SecretStr("short"))
    assert Settings(admin_api_key=SecretStr("")).admin_api_key is None


def test_the_admin_key_and_the_bootstrap_key_must_differ() -> None:
    key = SecretStr("a-key-of-at-least-16-characters")
    with pytest.raises(ValidationError, match="LETHE_ADMIN_API_KEY and LETHE_BOOTSTRAP_API_KEY must differ"):
        Settings(admin_api_key=key, bootstrap_api_key=key)
