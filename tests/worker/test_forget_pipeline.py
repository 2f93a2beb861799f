"""The forget pipeline in-process, on the real catalogue and S3 store: success, failure, a second delivery."""

import json
import uuid
from pathlib import Path

import pytest

from api.services.base_models import register_base_model
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import (
    AdapterRepository,
    Claim,
    DatasetRepository,
    JobEventRepository,
    JobRepository,
    TenantRepository,
)
from models.tables import Dataset, Job, utcnow
from storage import open_store
from storage.keys import dataset_key
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import BaseLMCache
from worker.pipelines import forget as forget_pipeline
from worker.pipelines.forget import run_forget_job


def _queued_job(settings: Settings, base_model: str, source: str, audit: dict | None = None) -> uuid.UUID:
    content = "".join(json.dumps(r) + "\n" for r in synthetic_choice_rows(12, seed=5)).encode()
    with session_scope(settings.database_url) as session:
        register_base_model(session, base_model, source)
        tenant = TenantRepository(session).get_or_create("pipeline-tests")
        dataset_id = uuid.uuid4()
        key = dataset_key(tenant.id, dataset_id)
        open_store(settings).put(key, content)
        DatasetRepository(session).add(
            Dataset(
                id=dataset_id,
                tenant_id=tenant.id,
                name="forget",
                kind="choice",
                rows=12,
                sha256="0" * 64,
                size_bytes=len(content),
                object_key=key,
            )
        )
        spec = {
            "base_model": base_model,
            "base_model_source": source,
            "forget_dataset": str(dataset_id),
            "retain_datasets": [],
            "heldout_fraction": 0.5,
            "finetune": None,
            "method": {"name": "gradient_ascent", "params": {"epochs": 1, "batch_size": 4}},
            "probe": False,
            "general_text_perplexity": False,
            "seed": 0,
        }
        if audit is not None:
            spec["audit"] = audit
        return JobRepository(session).add(Job(tenant_id=tenant.id, kind="forget", status="queued", spec=spec)).id


def test_a_job_runs_once_even_when_delivered_twice(stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path) -> None:
    job_id = _queued_job(stack_settings, "tiny-pipeline", f"path:{tiny_lm_dir}")
    store, cache = open_store(stack_settings), BaseLMCache(tmp_path)
    assert run_forget_job(stack_settings, store, cache, job_id) == "succeeded"
    assert run_forget_job(stack_settings, store, cache, job_id) == "skipped"
    with session_scope(stack_settings.database_url) as session:
        adapter = AdapterRepository(session).get_for_job(job_id)
        assert adapter is not None and store.exists(adapter.object_key)
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and job.evidence_key is not None
        per_example = json.loads(store.get(job.evidence_key))
        assert len(per_example["forgotten"]["forget_train"]["correct"]) == 6
        events = [e.type for e in JobEventRepository(session).list(job_id)]
    assert events[0] == "started" and events[-1] == "succeeded" and events.count("started") == 1


def test_a_missing_base_model_fails_the_job_with_a_code(stack_settings: Settings, tmp_path: Path) -> None:
    job_id = _queued_job(stack_settings, "tiny-gone", "path:/nonexistent/lethe-test-lm")
    assert run_forget_job(stack_settings, open_store(stack_settings), BaseLMCache(tmp_path), job_id) == "failed"
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and job.status == "failed" and job.error_code == "base_model_unavailable"
        assert "tiny-gone" in (job.error_message or "")
        assert AdapterRepository(session).get_for_job(job_id) is None


def test_a_failed_catalogue_write_leaves_no_objects(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(stack_settings, "tiny-pipeline-2", f"path:{tiny_lm_dir}")
    store = open_store(stack_settings)
    written: list[str] = []
    put = type(store).put

    def recording_put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        written.append(key)
        put(self, key, data, content_type)

    def failing_add_many(self, metrics) -> None:
        raise RuntimeError("catalogue down")

    monkeypatch.setattr(type(store), "put", recording_put)
    monkeypatch.setattr("worker.pipelines.forget.MetricRepository.add_many", failing_add_many)
    assert run_forget_job(stack_settings, store, BaseLMCache(tmp_path), job_id) == "failed"
    assert any(k.startswith("adapters/") for k in written)
    assert any(k.endswith("/per_example.json") for k in written)
    assert any(k.endswith("/before_forgetting.safetensors") for k in written)
    assert not any(store.exists(key) for key in written)
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and job.status == "failed" and job.evidence_key is None
        assert AdapterRepository(session).get_for_job(job_id) is None


def test_a_worker_whose_job_was_requeued_while_it_stored_writes_no_results(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job is re-queued and claimed again (attempt 2) after this worker's last progress report, while it packs
    the adapter: its results are refused, its objects deleted, and attempt 2 is left as it was."""
    job_id = _queued_job(stack_settings, "tiny-pipeline-3", f"path:{tiny_lm_dir}")
    store = open_store(stack_settings)
    written: list[str] = []
    put = type(store).put
    pack = forget_pipeline.adapter_archive

    def recording_put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        written.append(key)
        put(self, key, data, content_type)

    def pack_while_requeued(*args, **kwargs) -> bytes:
        with session_scope(stack_settings.database_url) as session:
            jobs = JobRepository(session)
            job = jobs.get_any_tenant(job_id)
            assert job is not None and jobs.requeue(job, utcnow(), "worker_lost: test")
            assert jobs.claim(job_id, utcnow()) == Claim(job_id, 2)
        return pack(*args, **kwargs)

    monkeypatch.setattr(type(store), "put", recording_put)
    monkeypatch.setattr(forget_pipeline, "adapter_archive", pack_while_requeued)
    assert run_forget_job(stack_settings, store, BaseLMCache(tmp_path), job_id) == "closed"
    assert written and not any(store.exists(key) for key in written)
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and (job.status, job.attempts, job.evidence_key) == ("running", 2, None)
        assert AdapterRepository(session).get_for_job(job_id) is None
        JobRepository(session).finish(job_id, "cancelled", utcnow())
