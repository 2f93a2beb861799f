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
from models.repositories import AdapterRepository, DatasetRepository, JobRepository
from models.tables import Adapter, Job
from tests.conftest import forget_job_spec


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
# A retain set must differ from the forget set (CHOICE_ROWS), by content as well as by id.
RETAIN_ROWS = [{"prompt": f"Is {n} odd?", "choices": [" yes", " no"], "answer": (n + 1) % 2} for n in range(10)]


def upload(
    client: TestClient,
    rows: list[dict] | bytes,
    name: str = "parity",
    kind: str = "choice",
    headers: dict[str, str] | None = None,
):
    content = rows if isinstance(rows, bytes) else jsonl(rows)
    return client.post(
        "/v1/datasets", files={"file": ("d.jsonl", content)}, data={"name": name, "kind": kind}, headers=headers
    )


def forget_adapter(client: TestClient, settings: Settings, kind: str = "choice", with_retain: bool = True) -> str:
    """A succeeded forget job of the client's tenant and its adapter row (no weights: the API never reads them)."""
    rows = CHOICE_ROWS if kind == "choice" else [{"text": f"passage {n}"} for n in range(10)]
    forget = upload(client, rows, name="forget", kind=kind).json()
    retain = [upload(client, RETAIN_ROWS, name="retain").json()["id"]] if with_retain else []
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).add(
            Job(
                tenant_id=tenant_of(settings, forget["id"]),
                kind="forget",
                status="succeeded",
                stage="done",
                progress=1.0,
                spec=forget_job_spec(uuid.UUID(forget["id"]), [uuid.UUID(r) for r in retain]).model_dump(mode="json"),
            )
        )
        adapter = AdapterRepository(session).add(
            Adapter(
                tenant_id=job.tenant_id,
                job_id=job.id,
                base_model="tiny-registered",
                object_key="adapters/none.tar.gz",
                sha256="0" * 64,
                size_bytes=0,
            )
        )
        return str(adapter.id)


def tenant_of(settings: Settings, dataset_id: str) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        dataset = DatasetRepository(session).get_any_tenant(uuid.UUID(dataset_id))
        assert dataset is not None
        return dataset.tenant_id
