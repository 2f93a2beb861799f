"""DELETE of datasets, jobs, adapters and audits on the real catalogue and S3 server: the objects leave the bucket,
no row names what went, the signed receipt verifies and its hashes are the stored bytes', reads answer 410, and the
refusals (409) while a job runs. Evidence retention deletes only evidence older than the tenant keeps it."""

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from minio import Minio
from pydantic import SecretStr
from sqlalchemy import select, text

from api.app import create_app, maintain_storage
from api.services.deletions import finish_deletions
from api.services.retention import apply_retention
from lethe.settings import Settings
from lethe.signing import signing_key, verify
from models.db import session_scope
from models.repositories import AdapterRepository, AuditRepository, JobRepository
from models.tables import Adapter, AuditDiagnostic, AuditResult, Base, CurvePoint, Deletion, Job, Metric, utcnow
from storage import open_store
from storage.keys import (
    adapter_key,
    before_forgetting_key,
    checkpoint_manifest_key,
    per_example_key,
    report_key,
)
from tests.api.conftest import CHOICE_ROWS, RETAIN_ROWS, tenant_of, upload
from tests.conftest import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY

ADMIN_KEY = "admin-key-for-the-retention-tests"


def bucket(settings: Settings) -> Minio:
    assert settings.s3_endpoint is not None
    return Minio(settings.s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)


def stored_keys(settings: Settings, tenant_id: uuid.UUID) -> set[str]:
    """Every object of the tenant in the S3 server's bucket, listed by the S3 protocol."""
    client = bucket(settings)
    return {
        obj.object_name
        for kind in ("datasets", "adapters", "evidence", "checkpoints", "reports")
        for obj in client.list_objects(BUCKET, prefix=f"{kind}/{tenant_id}/", recursive=True)
        if obj.object_name is not None
    }


def rows_naming(settings: Settings, ids: set[str]) -> list[str]:
    """Rows of any catalogue table but the deletion records that name one of `ids` in any column (JSON included)."""
    found = []
    with session_scope(settings.database_url) as session:
        for table in Base.metadata.sorted_tables:
            if table.name in ("deletions", "tombstones"):
                continue
            for row in session.execute(select(table)).all():
                cells = " ".join(str(value) for value in row)
                found += [f"{table.name}: {row_id}" for row_id in ids if row_id in cells]
    return found


@dataclass
class Forget:
    """A succeeded forget job with everything a real run stores, and an audit of its adapter that succeeded."""

    tenant_id: uuid.UUID
    forget_dataset: str
    retain_dataset: str
    job_id: str
    adapter_id: str
    audit_id: str
    audit_job_id: str
    stored: dict[str, bytes]  # object key -> the bytes stored there


def put(settings: Settings, stored: dict[str, bytes], key: str, data: bytes) -> None:
    open_store(settings).put(key, data)
    stored[key] = data


def run_forget_job(client: TestClient, settings: Settings, audit: bool = True, parent: str | None = None) -> Forget:
    """Upload, submit (with an Idempotency-Key), then do what a worker does for a forget job and its audit."""
    forget = upload(client, CHOICE_ROWS, name="forget").json()["id"]
    retain = upload(client, RETAIN_ROWS, name="retain").json()["id"]
    body = {"base_model": "tiny-registered", "forget_dataset": forget, "retain_datasets": [retain]}
    body["method"] = {"name": "random_label"}  # type: ignore[assignment]
    if parent is not None:
        body["parent_adapter"] = parent
    response = client.post("/v1/forget-requests", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["job_id"])
    tenant_id = tenant_of(settings, forget)
    stored: dict[str, bytes] = {}
    adapter_id = uuid.uuid4()
    with session_scope(settings.database_url) as session:
        jobs = JobRepository(session)
        claim = jobs.claim(job_id, utcnow())
        assert claim is not None
        put(settings, stored, per_example_key(tenant_id, job_id), b'{"forgotten": {"forget": {"accuracy": [1, 0]}}}')
        put(settings, stored, before_forgetting_key(tenant_id, job_id), b"safetensors before forgetting" * 10)
        # A checkpoint a crashed attempt left behind.
        put(settings, stored, checkpoint_manifest_key(tenant_id, job_id), b'{"slot": 0}')
        assert jobs.set_evidence(claim, per_example_key(tenant_id, job_id), 300)
        archive = b"\x1f\x8b adapter archive " + adapter_id.bytes
        put(settings, stored, adapter_key(tenant_id, adapter_id), archive)
        AdapterRepository(session).add(
            Adapter(
                id=adapter_id,
                tenant_id=tenant_id,
                job_id=job_id,
                base_model="tiny-registered",
                object_key=adapter_key(tenant_id, adapter_id),
                sha256=hashlib.sha256(archive).hexdigest(),
                size_bytes=len(archive),
                parent_adapter_id=uuid.UUID(parent) if parent else None,
            )
        )
        session.add(Metric(job_id=job_id, stage="forgotten", split="forget", name="accuracy", value=0.5))
        session.add(CurvePoint(job_id=job_id, split="forget", name="accuracy", step=1, value=0.6))
        assert jobs.finish(job_id, "succeeded", utcnow(), {"adapter_id": str(adapter_id)}, attempt=claim.attempt)
    if not audit:
        return Forget(tenant_id, forget, retain, str(job_id), str(adapter_id), "", "", stored)
    submitted = client.post("/v1/audits", json={"adapter_id": str(adapter_id)}, headers={"Idempotency-Key": "a1"})
    assert submitted.status_code == 202, submitted.text
    audit_id, audit_job_id = uuid.UUID(submitted.json()["audit_id"]), uuid.UUID(submitted.json()["job_id"])
    with session_scope(settings.database_url) as session:
        claim = JobRepository(session).claim(audit_job_id, utcnow())
        assert claim is not None
        put(settings, stored, report_key(tenant_id, audit_id, "json"), b'{"report": {}, "signature": {}}')
        put(settings, stored, report_key(tenant_id, audit_id, "html"), b"<html>report</html>")
        result = AuditResult(
            audit_id=audit_id, attack="relearn", params={}, metric="accuracy", split="forget", effect="recovery",
            before=1.0, after_forgetting=0.5, after_attack=0.6, worst_variant="k=4", verdict="robust", variants=[],
            curves={},
        )  # fmt: skip
        diagnostic = AuditDiagnostic(
            audit_id=audit_id, name="restore", params={}, metric="krs", split="forget", rows=2, rows_undefined=0,
            variants=[],
        )  # fmt: skip
        AuditRepository(session).record(
            audit_id, [result], "robust", report_key(tenant_id, audit_id, "json"),
            report_key(tenant_id, audit_id, "html"), "0" * 64, "k", [], 30, [],
        )  # fmt: skip
        AuditRepository(session).add_diagnostics([diagnostic])
        assert JobRepository(session).finish(audit_job_id, "succeeded", utcnow(), attempt=claim.attempt)
    return Forget(tenant_id, forget, retain, str(job_id), str(adapter_id), str(audit_id), str(audit_job_id), stored)


def check_receipt(settings: Settings, signed: dict, resource: str, resource_id: str) -> dict:
    """The receipt verifies with the server's key, names the resource, and is the one GET /v1/deletions/{id} keeps."""
    assert set(signed) == {"receipt", "signature"}
    assert verify({"report": signed["receipt"], "signature": signed["signature"]}, signing_key(settings)).valid
    receipt = signed["receipt"]
    assert (receipt["resource"], receipt["resource_id"], receipt["reason"]) == (resource, resource_id, "request")
    return receipt


def test_deleting_a_forget_job_takes_its_rows_objects_adapter_and_audits(
    client: TestClient, stack_settings: Settings, app_client: TestClient
) -> None:
    run = run_forget_job(client, stack_settings)
    gone_keys = set(run.stored)
    assert gone_keys <= stored_keys(stack_settings, run.tenant_id)

    response = client.delete(f"/v1/jobs/{run.job_id}")
    assert response.status_code == 200, response.text
    receipt = check_receipt(stack_settings, response.json(), "job", run.job_id)
    # Every object the job, its adapter and its audit stored is listed with the SHA-256 and size of its bytes.
    assert {o["key"]: (o["sha256"], o["size_bytes"]) for o in receipt["objects"]} == {
        key: (hashlib.sha256(data).hexdigest(), len(data)) for key, data in run.stored.items()
    }
    assert {(r["resource"], r["id"]) for r in receipt["resources"]} == {
        ("job", run.job_id), ("adapter", run.adapter_id), ("audit", run.audit_id), ("job", run.audit_job_id),
    }  # fmt: skip
    assert receipt["rows"] == {
        "adapters": 1, "audit_diagnostics": 1, "audit_results": 1, "audits": 1, "curve_points": 1,
        "idempotency_keys": 2, "job_events": 4, "jobs": 2, "metrics": 1,
    }  # fmt: skip

    # Gone from the S3 server (the datasets stay), and no row names anything that went.
    assert stored_keys(stack_settings, run.tenant_id) == {
        f"datasets/{run.tenant_id}/{run.forget_dataset}.jsonl",
        f"datasets/{run.tenant_id}/{run.retain_dataset}.jsonl",
    }
    assert rows_naming(stack_settings, {run.job_id, run.adapter_id, run.audit_id, run.audit_job_id}) == []
    with session_scope(stack_settings.database_url) as session:
        deletion = session.get(Deletion, uuid.UUID(receipt["id"]))
        assert deletion is not None and deletion.pending_keys == []  # every object confirmed deleted

    for path in (
        f"/v1/jobs/{run.job_id}", f"/v1/jobs/{run.audit_job_id}", f"/v1/adapters/{run.adapter_id}",
        f"/v1/adapters/{run.adapter_id}/download", f"/v1/audits/{run.audit_id}", f"/v1/audits/{run.audit_id}/report",
        f"/v1/jobs/{run.job_id}/per-example",
    ):  # fmt: skip
        gone = client.get(path)
        assert (gone.status_code, gone.json()["error"]) == (410, "gone"), path
        assert f"was deleted at {receipt['deleted_at']} by request (deletion {receipt['id']})" in gone.json()["detail"]
    assert client.delete(f"/v1/jobs/{run.job_id}").status_code == 410
    assert client.get(f"/v1/deletions/{receipt['id']}").json() == response.json()
    assert client.get("/v1/deletions", params={"resource": "job"}).json()["items"] == [response.json()]
    # The tombstones are the tenant's: another tenant sees 404s, never when or what it deleted.
    stranger = {"X-API-Key": _stranger_key(stack_settings)}
    assert app_client.get(f"/v1/jobs/{run.job_id}", headers=stranger).status_code == 404
    assert app_client.get(f"/v1/deletions/{receipt['id']}", headers=stranger).status_code == 404
    assert app_client.delete(f"/v1/jobs/{run.job_id}", headers=stranger).status_code == 404
    assert client.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404


def _stranger_key(settings: Settings) -> str:
    from api.services.auth import create_key

    with session_scope(settings.database_url) as session:
        return create_key(session, f"stranger-{uuid.uuid4().hex[:8]}")


def test_a_dataset_read_by_a_queued_or_running_job_is_409_and_a_finished_jobs_keeps_its_metrics(
    client: TestClient, stack_settings: Settings
) -> None:
    forget = upload(client, CHOICE_ROWS, name="forget").json()["id"]
    body = {"base_model": "tiny-registered", "forget_dataset": forget, "method": {"name": "random_label"}}
    job_id = client.post("/v1/forget-requests", json=body).json()["job_id"]
    refused = client.delete(f"/v1/datasets/{forget}")
    assert refused.status_code == 409 and f"forget job {job_id} (queued)" in refused.json()["detail"]
    with session_scope(stack_settings.database_url) as session:
        assert JobRepository(session).claim(uuid.UUID(job_id), utcnow()) is not None
    assert "(running)" in client.delete(f"/v1/datasets/{forget}").json()["detail"]
    running = client.delete(f"/v1/jobs/{job_id}")
    assert running.status_code == 409 and f"POST /v1/jobs/{job_id}/cancel" in running.json()["detail"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    tenant_id = tenant_of(stack_settings, forget)
    content = open_store(stack_settings).get(f"datasets/{tenant_id}/{forget}.jsonl")
    response = client.delete(f"/v1/datasets/{forget}")
    assert response.status_code == 200, response.text
    receipt = check_receipt(stack_settings, response.json(), "dataset", forget)
    assert receipt["objects"] == [
        {
            "key": f"datasets/{tenant_id}/{forget}.jsonl",
            "sha256": hashlib.sha256(content).hexdigest(),
            "size_bytes": len(content),
        }
    ]
    assert receipt["rows"] == {"datasets": 1}
    assert stored_keys(stack_settings, tenant_id) == set()
    assert client.get(f"/v1/datasets/{forget}").status_code == 410
    assert client.get("/v1/datasets").json()["items"] == []
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"  # the finished job stays


def test_an_adapter_with_a_child_or_an_open_audit_is_409_and_its_job_stays(
    client: TestClient, stack_settings: Settings
) -> None:
    parent = run_forget_job(client, stack_settings, audit=False)
    child = run_forget_job(client, stack_settings, audit=False, parent=parent.adapter_id)
    refused = client.delete(f"/v1/adapters/{parent.adapter_id}")
    assert refused.status_code == 409 and child.adapter_id in refused.json()["detail"]
    assert client.delete(f"/v1/jobs/{parent.job_id}").status_code == 409  # the job would take the adapter

    audit = client.post("/v1/audits", json={"adapter_id": child.adapter_id}).json()
    assert "is queued: cancel its job first" in client.delete(f"/v1/adapters/{child.adapter_id}").json()["detail"]
    assert client.delete(f"/v1/audits/{audit['audit_id']}").status_code == 409
    assert client.post(f"/v1/jobs/{audit['job_id']}/cancel").status_code == 200

    response = client.delete(f"/v1/adapters/{child.adapter_id}")
    assert response.status_code == 200, response.text
    receipt = check_receipt(stack_settings, response.json(), "adapter", child.adapter_id)
    assert [r["resource"] for r in receipt["resources"]] == ["audit", "job", "adapter"]
    assert [o["key"] for o in receipt["objects"]] == [adapter_key(child.tenant_id, uuid.UUID(child.adapter_id))]
    job = client.get(f"/v1/jobs/{child.job_id}").json()
    assert job["status"] == "succeeded" and job["adapter_id"] is None and job["metrics"]
    assert client.get(f"/v1/jobs/{child.job_id}/per-example").status_code == 200  # its evidence stays with it
    assert client.get(f"/v1/audits/{audit['audit_id']}").status_code == 410
    # With its child gone, the parent can go.
    assert client.delete(f"/v1/adapters/{parent.adapter_id}").status_code == 200


def test_deleting_an_audit_takes_its_reports_results_and_job(client: TestClient, stack_settings: Settings) -> None:
    run = run_forget_job(client, stack_settings)
    response = client.delete(f"/v1/audits/{run.audit_id}")
    assert response.status_code == 200, response.text
    receipt = check_receipt(stack_settings, response.json(), "audit", run.audit_id)
    reports = {report_key(run.tenant_id, uuid.UUID(run.audit_id), fmt) for fmt in ("json", "html")}
    assert {o["key"] for o in receipt["objects"]} == reports
    assert not reports & stored_keys(stack_settings, run.tenant_id)
    assert rows_naming(stack_settings, {run.audit_id, run.audit_job_id}) == []
    assert client.get(f"/v1/jobs/{run.job_id}").json()["audit_ids"] == []
    assert client.get(f"/v1/adapters/{run.adapter_id}").status_code == 200


def test_objects_a_crash_left_behind_are_deleted_by_the_maintenance_pass(
    client: TestClient, stack_settings: Settings, app_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_forget_job(client, stack_settings, audit=False)
    store = app_client.app.state.store  # type: ignore[attr-defined]

    def store_down(key: str) -> None:
        raise OSError("the object store is unreachable")

    monkeypatch.setattr(store, "delete", store_down)
    response = client.delete(f"/v1/jobs/{run.job_id}")
    assert response.status_code == 200  # the rows are gone: the deletion stands
    monkeypatch.undo()
    assert client.get(f"/v1/jobs/{run.job_id}").status_code == 410
    assert set(run.stored) <= stored_keys(stack_settings, run.tenant_id)  # left behind, but listed as pending
    deletion_id = uuid.UUID(response.json()["receipt"]["id"])
    with session_scope(stack_settings.database_url) as session:
        deletion = session.get(Deletion, deletion_id)
        assert deletion is not None and set(deletion.pending_keys) >= set(run.stored)

    finish_deletions(stack_settings, store, utcnow())  # too recent for the pass: its request may still be at it
    assert set(run.stored) <= stored_keys(stack_settings, run.tenant_id)
    assert finish_deletions(stack_settings, store, utcnow() + timedelta(minutes=2)) >= 1
    assert not set(run.stored) & stored_keys(stack_settings, run.tenant_id)
    with session_scope(stack_settings.database_url) as session:
        deletion = session.get(Deletion, deletion_id)
        assert deletion is not None and deletion.pending_keys == []


@pytest.fixture
def admin(stack_settings: Settings, app_client: TestClient) -> Iterator[TestClient]:
    settings = stack_settings.model_copy(update={"admin_api_key": SecretStr(ADMIN_KEY)})
    with TestClient(create_app(settings), headers={"X-API-Key": ADMIN_KEY}) as admin_client:
        yield admin_client


def test_retention_deletes_only_evidence_older_than_the_tenant_keeps_it(
    client: TestClient, admin: TestClient, stack_settings: Settings
) -> None:
    old, recent = (run_forget_job(client, stack_settings, audit=False) for _ in range(2))
    with session_scope(stack_settings.database_url) as session:
        tenant = session.execute(text("SELECT name FROM tenants WHERE id = :id"), {"id": old.tenant_id}).scalar_one()
        for run, age_days in ((old, 10), (recent, 1)):
            job = session.get(Job, uuid.UUID(run.job_id))
            assert job is not None
            job.finished_at = utcnow() - timedelta(days=age_days)

    assert client.put(f"/v1/tenants/{tenant}/retention", json={"evidence_retention_days": 7}).status_code == 403
    assert admin.put("/v1/tenants/nobody/retention", json={"evidence_retention_days": 7}).status_code == 404
    assert admin.put(f"/v1/tenants/{tenant}/retention", json={"evidence_retention_days": 0}).status_code == 422
    set_to = admin.put(f"/v1/tenants/{tenant}/retention", json={"evidence_retention_days": 7})
    assert set_to.json() == {"tenant": tenant, "evidence_retention_days": 7}

    store = open_store(stack_settings)
    # The API's own maintenance loop may get there first: what counts is the state after a pass.
    apply_retention(stack_settings, store, utcnow())
    evidence = {
        per_example_key(old.tenant_id, uuid.UUID(old.job_id)),
        before_forgetting_key(old.tenant_id, uuid.UUID(old.job_id)),
        checkpoint_manifest_key(old.tenant_id, uuid.UUID(old.job_id)),
    }
    left = stored_keys(stack_settings, old.tenant_id)
    assert not evidence & left
    assert set(recent.stored) <= left  # the recent job's evidence stays
    assert adapter_key(old.tenant_id, uuid.UUID(old.adapter_id)) in left  # adapters are not evidence

    [signed] = client.get("/v1/deletions", params={"reason": "retention"}).json()["items"]
    assert verify({"report": signed["receipt"], "signature": signed["signature"]}, signing_key(stack_settings)).valid
    assert (signed["receipt"]["resource"], signed["receipt"]["resource_id"]) == ("evidence", old.job_id)
    assert {o["key"]: o["sha256"] for o in signed["receipt"]["objects"]} == {
        key: hashlib.sha256(old.stored[key]).hexdigest() for key in evidence
    }
    per_example = client.get(f"/v1/jobs/{old.job_id}/per-example")
    assert per_example.status_code == 410 and "by the tenant's evidence retention" in per_example.json()["detail"]
    job = client.get(f"/v1/jobs/{old.job_id}").json()
    deleted_at = datetime.fromisoformat(signed["receipt"]["deleted_at"])
    assert datetime.fromisoformat(job["evidence_deleted_at"]) == deleted_at
    assert job["metrics"] and job["adapter_id"] == old.adapter_id
    assert client.get(f"/v1/jobs/{recent.job_id}").json()["evidence_deleted_at"] is None
    refused = client.post("/v1/audits", json={"adapter_id": old.adapter_id})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("adapter_id: the pre-forgetting state")

    maintain_storage(stack_settings, store)  # the next pass finds nothing more to delete
    assert len(client.get("/v1/deletions", params={"reason": "retention"}).json()["items"]) == 1
    # The deleted evidence no longer counts in the tenant's stored bytes.
    with session_scope(stack_settings.database_url) as session:
        job_row = session.get(Job, uuid.UUID(old.job_id))
        assert job_row is not None and job_row.evidence_size_bytes == 0 and job_row.evidence_key is None


def test_deleting_an_audit_job_deletes_its_audit(client: TestClient, stack_settings: Settings) -> None:
    run = run_forget_job(client, stack_settings)
    response = client.delete(f"/v1/jobs/{run.audit_job_id}")
    assert response.status_code == 200, response.text
    receipt = check_receipt(stack_settings, response.json(), "job", run.audit_job_id)
    assert [(r["resource"], r["id"]) for r in receipt["resources"]] == [
        ("audit", run.audit_id),
        ("job", run.audit_job_id),
    ]
    assert client.get(f"/v1/audits/{run.audit_id}").status_code == 410
    assert client.get(f"/v1/jobs/{run.job_id}").status_code == 200


def test_retention_leaves_the_evidence_of_an_adapter_being_audited(
    client: TestClient, admin: TestClient, stack_settings: Settings
) -> None:
    run = run_forget_job(client, stack_settings, audit=False)
    audit = client.post("/v1/audits", json={"adapter_id": run.adapter_id}).json()  # queued: it needs the evidence
    with session_scope(stack_settings.database_url) as session:
        job = session.get(Job, uuid.UUID(run.job_id))
        assert job is not None
        job.finished_at = utcnow() - timedelta(days=30)
        tenant = session.execute(text("SELECT name FROM tenants WHERE id = :id"), {"id": run.tenant_id}).scalar_one()
    assert admin.put(f"/v1/tenants/{tenant}/retention", json={"evidence_retention_days": 1}).status_code == 200
    store = open_store(stack_settings)
    apply_retention(stack_settings, store, utcnow())
    assert client.get(f"/v1/jobs/{run.job_id}/per-example").status_code == 200
    assert client.post(f"/v1/jobs/{audit['job_id']}/cancel").status_code == 200
    apply_retention(stack_settings, store, utcnow())
    assert client.get(f"/v1/jobs/{run.job_id}/per-example").status_code == 410
    assert admin.put(f"/v1/tenants/{tenant}/retention", json={"evidence_retention_days": None}).json() == {
        "tenant": tenant,
        "evidence_retention_days": None,
    }
