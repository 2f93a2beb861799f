import hashlib
import uuid

from fastapi.testclient import TestClient

from api.services.auth import create_key
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AdapterRepository, JobRepository, TenantRepository
from models.tables import Adapter, Job
from storage import open_store
from storage.keys import adapter_key


def _stored_adapter(settings: Settings, tenant_name: str, payload: bytes) -> uuid.UUID:
    """An adapter row and its object, as the worker leaves them after a successful job."""
    adapter_id = uuid.uuid4()
    with session_scope(settings.database_url) as session:
        tenant = TenantRepository(session).get_or_create(tenant_name)
        job = JobRepository(session).add(Job(tenant_id=tenant.id, kind="forget", status="succeeded", spec={}))
        key = adapter_key(tenant.id, adapter_id)
        open_store(settings).put(key, payload)
        AdapterRepository(session).add(
            Adapter(
                id=adapter_id,
                tenant_id=tenant.id,
                job_id=job.id,
                base_model="tiny",
                object_key=key,
                sha256=hashlib.sha256(payload).hexdigest(),
                size_bytes=len(payload),
            )
        )
    return adapter_id


def test_adapter_metadata_and_download_belong_to_the_tenant(app_client: TestClient, stack_settings: Settings) -> None:
    owner = f"adapter-owner-{uuid.uuid4().hex[:8]}"
    payload = b"\x1f\x8b not really a tarball, but bytes that must come back unchanged" * 1000
    adapter_id = _stored_adapter(stack_settings, owner, payload)
    with session_scope(stack_settings.database_url) as session:
        owner_key, other_key = create_key(session, owner), create_key(session, "adapter-stranger")

    meta = app_client.get(f"/v1/adapters/{adapter_id}", headers={"X-API-Key": owner_key})
    assert meta.status_code == 200
    assert meta.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert meta.json()["size_bytes"] == len(payload)
    download = app_client.get(f"/v1/adapters/{adapter_id}/download", headers={"X-API-Key": owner_key})
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/gzip"
    assert download.content == payload

    for path in (f"/v1/adapters/{adapter_id}", f"/v1/adapters/{adapter_id}/download"):
        response = app_client.get(path, headers={"X-API-Key": other_key})
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


def test_a_stored_object_that_is_gone_is_a_404_before_any_200(app_client: TestClient, stack_settings: Settings) -> None:
    owner = f"adapter-owner-{uuid.uuid4().hex[:8]}"
    adapter_id = _stored_adapter(stack_settings, owner, b"bytes the store then loses")
    with session_scope(stack_settings.database_url) as session:
        adapter = AdapterRepository(session).get_any_tenant(adapter_id)
        assert adapter is not None
        open_store(stack_settings).delete(adapter.object_key)
        job = JobRepository(session).get_any_tenant(adapter.job_id)
        assert job is not None
        job.evidence_key = f"evidence/{job.tenant_id}/{job.id}/per_example.json"  # never written
        job_id = job.id
        key = create_key(session, owner)

    download = app_client.get(f"/v1/adapters/{adapter_id}/download", headers={"X-API-Key": key})
    assert download.status_code == 404
    assert download.json() == {
        "error": "not_found",
        "detail": f"the archive of adapter {adapter_id}: missing from the object store",
    }
    evidence = app_client.get(f"/v1/jobs/{job_id}/per-example", headers={"X-API-Key": key})
    assert evidence.status_code == 404
    assert evidence.json()["detail"] == f"the per-example values of job {job_id}: missing from the object store"
