import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.services.auth import create_key
from api.services.base_models import register_base_model
from lethe.settings import Settings
from models.db import session_scope


@pytest.fixture(scope="session")
def app_client(stack_settings: Settings) -> Iterator[TestClient]:
    with session_scope(stack_settings.database_url) as session:
        register_base_model(session, "tiny-registered", "path:/nonexistent/tiny", "validation tests only")
    with TestClient(create_app(stack_settings)) as client:
        yield client


@pytest.fixture
def api_key(stack_settings: Settings) -> str:
    """A key for a fresh tenant, so tests never see each other's rows."""
    with session_scope(stack_settings.database_url) as session:
        return create_key(session, f"tenant-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def client(app_client: TestClient, api_key: str) -> TestClient:
    app_client.headers["X-API-Key"] = api_key
    return app_client


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


CHOICE_ROWS = [{"prompt": f"Is {n} even?", "choices": [" yes", " no"], "answer": n % 2} for n in range(10)]


def upload(client: TestClient, rows: list[dict] | bytes, name: str = "parity", kind: str = "choice"):
    content = rows if isinstance(rows, bytes) else jsonl(rows)
    return client.post("/v1/datasets", files={"file": ("d.jsonl", content)}, data={"name": name, "kind": kind})
