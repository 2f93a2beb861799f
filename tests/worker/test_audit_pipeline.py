"""The audit pipeline in-process, on the real catalogue and S3 store: the audit a forget request asked for, a second
delivery, a tampered adapter, and a failed catalogue write that must leave no report behind."""

import json
import uuid
from pathlib import Path

import pytest

from lethe.forgetting import Forgetting
from lethe.settings import Settings
from lethe.signing import signing_key, verify
from models.db import session_scope
from models.repositories import AdapterRepository, AuditRepository, JobEventRepository, JobRepository
from storage import open_store
from storage.keys import before_forgetting_key
from tests.worker.test_forget_pipeline import _queued_job
from worker.engine.lm.load import BaseLMCache
from worker.pipelines.audit import run_audit_job
from worker.pipelines.forget import run_forget_job

AUDIT = {
    "attacks": [
        {"name": "restore", "params": {"groups": ["last_1", "mlp"], "split": "forget_train"}},
        {"name": "quantize", "params": {"schemes": ["int8"], "group_size": 64, "split": "forget_train"}},
    ],
    "thresholds": {"recovery": 0.25, "attacks": {}, "trigger_drop": 0.05, "min_forgetting": 0.05},
}


def _forgotten_with_audit(
    settings: Settings, lm_dir: Path, cache: BaseLMCache, name: str
) -> tuple[uuid.UUID, uuid.UUID]:
    """Run a forget job whose request asked for AUDIT; (forget job id, audit job id), the audit job enqueued."""
    job_id = _queued_job(settings, name, f"path:{lm_dir}", audit=AUDIT)
    enqueued: list[uuid.UUID] = []
    assert run_forget_job(settings, open_store(settings), cache, job_id, enqueue_audit=enqueued.append) == "succeeded"
    assert len(enqueued) == 1
    return job_id, enqueued[0]


def test_the_requested_audit_runs_once_and_stores_a_signed_report(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    forget_job_id, audit_job_id = _forgotten_with_audit(stack_settings, tiny_lm_dir, cache, "tiny-audit")
    with session_scope(stack_settings.database_url) as session:
        forget_job = JobRepository(session).get_any_tenant(forget_job_id)
        assert forget_job is not None and forget_job.forgetting is not None
        forgetting = Forgetting.from_dict(forget_job.forgetting)
        assert store.exists(before_forgetting_key(forget_job.tenant_id, forget_job_id))
        audit_job = JobRepository(session).get_any_tenant(audit_job_id)
        assert audit_job is not None and audit_job.kind == "audit" and audit_job.status == "queued"
        assert [e.type for e in JobEventRepository(session).list(forget_job_id)][-1] == "audit_requested"

    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "succeeded"
    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "skipped"
    with session_scope(stack_settings.database_url) as session:
        audit = AuditRepository(session).get_for_job(audit_job_id)
        assert audit is not None
        # restore is a diagnostic: only quantize is judged, and the verdict is quantize's alone.
        results = AuditRepository(session).results(audit.id)
        assert [r.attack for r in results] == ["quantize"]
        assert audit.verdict == results[0].verdict
        [restore] = AuditRepository(session).diagnostics(audit.id)
        # The request's old groups (last_1, mlp) read as the MLP over windows of one layer; the tiny LM has 2.
        assert (restore.name, restore.metric, restore.split, restore.rows) == ("restore", "krs", "forget_train", 6)
        assert [v["name"] for v in restore.variants] == ["mlp@0-0", "mlp@1-1"]
        assert all(v["n"] + restore.rows_undefined == restore.rows for v in restore.variants)
        diagnostic_row = {key: getattr(restore, key) for key in ("params", "rows_undefined", "variants")}
        report_key, html_key, signature = audit.report_key, audit.report_html_key, audit.signature
        assert audit.report_html_key is not None
        # The tenant's quota counts the report's JSON and HTML.
        assert audit.report_size_bytes == len(store.get(audit.report_key or "")) + len(store.get(audit.report_html_key))
    assert report_key is not None
    signed = json.loads(store.get(report_key))
    assert verify(signed, signing_key(stack_settings)).valid and signed["signature"]["value"] == signature
    assert [a["name"] for a in signed["report"]["attacks"]] == ["quantize"]
    [entry] = signed["report"]["diagnostics"]
    assert {key: entry[key] for key in diagnostic_row} == diagnostic_row
    assert "can be removed outright" in signed["report"]["diagnostics_note"]
    page = store.get(html_key or "").decode()
    assert "Diagnostics: where the change sits" in page and "mlp@0-0" not in page and "0–0" in page
    # The forget job's outcome of forgetting, its stage metrics (one per key, with n) and its curve points.
    report = signed["report"]
    expected = json.loads(json.dumps({**forgetting.as_dict(), "summary": forgetting.summary()}))
    assert report["forget_job"]["forgetting"] == expected
    keys = [(m["stage"], m["split"], m["name"]) for m in report["stage_metrics"]]
    assert len(keys) == len(set(keys))
    accuracies = [m for m in report["stage_metrics"] if m["name"] == "accuracy"]
    assert accuracies and all(m["n"] and m["ci_low"] <= m["value"] <= m["ci_high"] for m in accuracies)
    forget_curve = [c for c in report["training_curves"] if c["split"] == "forget_train"]
    assert len(forget_curve) == 1 and forget_curve[0]["points"][-1][0] == forgetting.steps


def test_a_tampered_adapter_fails_the_audit(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    _, audit_job_id = _forgotten_with_audit(stack_settings, tiny_lm_dir, cache, "tiny-audit-2")
    get = type(store).get

    def tampering_get(self, key: str) -> bytes:
        data = get(self, key)
        return data[:-1] + bytes([data[-1] ^ 1]) if key.startswith("adapters/") else data

    monkeypatch.setattr(type(store), "get", tampering_get)
    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "failed"
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(audit_job_id)
        assert job is not None and job.error_code == "adapter_corrupt"


def test_a_failed_catalogue_write_leaves_no_report(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    _, audit_job_id = _forgotten_with_audit(stack_settings, tiny_lm_dir, cache, "tiny-audit-3")
    written: list[str] = []
    put = type(store).put

    def recording_put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        written.append(key)
        put(self, key, data, content_type)

    def failing_record(self, *args, **kwargs) -> None:
        raise RuntimeError("catalogue down")

    monkeypatch.setattr(type(store), "put", recording_put)
    monkeypatch.setattr("worker.pipelines.audit.AuditRepository.record", failing_record)
    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "failed"
    assert sorted(k.rsplit("/", 1)[1] for k in written) == ["report.html", "report.json"]
    assert not any(store.exists(key) for key in written)
    with session_scope(stack_settings.database_url) as session:
        audit = AuditRepository(session).get_for_job(audit_job_id)
        assert audit is not None and audit.verdict is None and audit.report_key is None
        assert AuditRepository(session).results(audit.id) == []
        assert AdapterRepository(session).get(audit.tenant_id, audit.adapter_id) is not None


def test_an_audit_the_broker_refuses_is_failed_and_the_forget_job_still_succeeds(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    store = open_store(stack_settings)
    job_id = _queued_job(stack_settings, "tiny-audit-4", f"path:{tiny_lm_dir}", audit=AUDIT)

    def refuse(_audit_job_id: uuid.UUID) -> None:
        raise ConnectionError("connection refused")

    assert run_forget_job(stack_settings, store, BaseLMCache(tmp_path), job_id, enqueue_audit=refuse) == "succeeded"
    with session_scope(stack_settings.database_url) as session:
        adapter = AdapterRepository(session).get_for_job(job_id)
        assert adapter is not None and store.exists(adapter.object_key)
        [audit] = AuditRepository(session).list_for_adapter(adapter.id)
        audit_job = JobRepository(session).get_any_tenant(audit.job_id)
        assert audit_job is not None and (audit_job.status, audit_job.error_code) == ("failed", "broker_unavailable")
        assert "connection refused" in (audit_job.error_message or "")
