"""The spec as SDK generators read it: enums that mirror the core's registries, a body per media type, named
schemas, and the package's version."""

import importlib.metadata
import re
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient

from api import schemas
from api.app import package_version
from lethe.forgetting import STOP_REASONS
from lethe.metrics import DIRECTIONS, FAMILIES, INTERVALS, METRICS
from lethe.queue import JOB_KINDS
from lethe.rows import ROW_TYPES


@pytest.mark.parametrize(
    ("literal", "registry"),
    [
        (schemas.DatasetKind, ROW_TYPES),
        (schemas.JobKind, JOB_KINDS),
        (schemas.MetricFamily, FAMILIES),
        (schemas.MetricDirection, DIRECTIONS),
        (schemas.IntervalKind, INTERVALS),
        (schemas.StopReason, STOP_REASONS),
    ],
)
def test_each_enum_of_the_spec_is_its_registry(literal: Any, registry: Any) -> None:
    assert sorted(get_args(literal)) == sorted(registry)


def test_every_metric_validates_as_published() -> None:
    for _name, spec in METRICS.items():
        schemas.MetricSpecOut.model_validate(spec, from_attributes=True)


@pytest.fixture(scope="module")
def spec(app_client: TestClient) -> dict[str, Any]:
    return app_client.get("/openapi.json").json()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_info_version_is_the_package_version(spec: dict[str, Any]) -> None:
    assert spec["info"]["version"] == importlib.metadata.version("lethe")


def test_bodies_have_names_of_their_own(spec: dict[str, Any]) -> None:
    # FastAPI names a form `Body_<operation>` unless it is a model: a generated SDK would carry that name.
    assert not [name for name in spec["components"]["schemas"] if name.startswith("Body_")]
    upload = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload == {"$ref": "#/components/schemas/DatasetUpload"}
    file = spec["components"]["schemas"]["DatasetUpload"]["properties"]["file"]
    assert file["format"] == "binary"  # what generators take for a file to upload


def test_no_operation_declares_accept_or_content_type(spec: dict[str, Any]) -> None:
    """Content negotiation is HTTP's; declared as parameters, generators make them arguments that break parsing."""
    for method, path, op in _operations(spec):
        headers = {p["name"].lower() for p in op.get("parameters", []) if p["in"] == "header"}
        assert not headers & {"accept", "content-type"}, (method, path)


def test_every_body_has_a_schema(spec: dict[str, Any]) -> None:
    """A media type without a schema is dropped (or returned as None) by a generated SDK."""
    for method, path, op in _operations(spec):
        for status, response in op["responses"].items():
            for media_type, content in response.get("content", {}).items():
                assert "schema" in content, (method, path, status, media_type)


@pytest.mark.parametrize(
    ("path", "status"), [("/v1/datasets", "201"), ("/v1/forget-requests", "202"), ("/v1/audits", "202")]
)
def test_what_creates_says_where_it_is(spec: dict[str, Any], path: str, status: str) -> None:
    """The dataset, or the job or audit to poll: `Location`, required (tests/api/test_headers.py: sent)."""
    assert spec["paths"][path]["post"]["responses"][status]["headers"]["Location"]["required"] is True


def test_enum_like_strings_are_enums(spec: dict[str, Any]) -> None:
    """Every `kind`, `status`, `verdict`, `family` ... field lists its values."""
    enum_like = re.compile(r"^(kind|kinds|status|verdict|family|higher_means|interval|stop_reason|effect)$")
    for name, schema in spec["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if not enum_like.match(field):
                continue
            prop = prop.get("items", prop)
            options = prop.get("anyOf", [prop])
            assert any(option.keys() & {"enum", "const", "$ref"} for option in options), (name, field)


def test_version_of_a_checkout_never_installed_is_pyprojects(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert package_version() == pyproject["project"]["version"]
