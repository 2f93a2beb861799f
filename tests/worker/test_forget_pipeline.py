"""The forget pipeline in-process, on the real catalogue and S3 store: success, failure, a second delivery."""

import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from scipy.stats import binomtest
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.schemas import MetricOut
from api.services.base_models import register_base_model
from api.services.jobs import get_job
from lethe.base_model_sources import HubSource
from lethe.hub import HubOptions, resolve
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import (
    AdapterRepository,
    BaseModelRepository,
    Claim,
    CurvePointRepository,
    DatasetRepository,
    JobEventRepository,
    JobRepository,
    MetricRepository,
    TenantRepository,
)
from models.tables import Dataset, Job, utcnow
from storage import ObjectStore, open_store
from storage.keys import before_forgetting_key, checkpoint_manifest_key, checkpoint_tensors_key, dataset_key
from tests.hub_server import LoopbackHub, files_of
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget.snapshot import ForgetSnapshot
from worker.engine.lm.load import BaseLMCache
from worker.engine.lm.placement import worker_placement
from worker.pipelines import forget as forget_pipeline
from worker.pipelines.checkpoints import JobCheckpoint
from worker.pipelines.forget import run_forget_job


def _queued_job(
    settings: Settings,
    base_model: str,
    source: str,
    audit: dict | None = None,
    method: dict | None = None,
    finetune: dict | None = None,
    spec_fields: dict | None = None,
) -> uuid.UUID:
    content = "".join(json.dumps(r) + "\n" for r in synthetic_choice_rows(12, seed=5)).encode()
    with session_scope(settings.database_url) as session:
        if source.startswith("hf:"):
            BaseModelRepository(session).upsert(base_model, source, "", None)
        else:
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
            "finetune": finetune,
            "method": method or {"name": "gradient_ascent", "params": {"epochs": 1, "batch_size": 4}},
            "probe": False,
            "general_text_perplexity": False,
            "seed": 0,
        }
        if audit is not None:
            spec["audit"] = audit
        spec.update(spec_fields or {})
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
        # The tenant's quota counts the evidence: the per-example values and the pre-forgetting state.
        before = store.get(before_forgetting_key(job.tenant_id, job_id))
        assert job.evidence_size_bytes == len(store.get(job.evidence_key)) + len(before)
        events = [e.type for e in JobEventRepository(session).list(job_id)]
        served = get_job(session, job.tenant_id, job_id)
        archive = store.get(adapter.object_key)
    assert events[0] == "running" and events[-1] == "succeeded" and events.count("running") == 1
    # Where and how it ran, as its worker recorded it at the claim: on the job, served, and in the adapter's manifest.
    placement = worker_placement()
    assert (job.device, job.precision) == (placement.device_label(), placement.precision_label())
    assert (served.device, served.precision) == (job.device, job.precision)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.load(manifest_file)
    assert (manifest["device"], manifest["precision"]) == (job.device, job.precision)


def test_a_missing_base_model_fails_the_job_with_a_code(stack_settings: Settings, tmp_path: Path) -> None:
    job_id = _queued_job(stack_settings, "tiny-gone", "path:/nonexistent/lethe-test-lm")
    assert run_forget_job(stack_settings, open_store(stack_settings), BaseLMCache(tmp_path), job_id) == "failed"
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and job.status == "failed" and job.error_code == "base_model_unavailable"
        assert "tiny-gone" in (job.error_message or "")
        assert AdapterRepository(session).get_for_job(job_id) is None


def test_a_hub_base_model_is_loaded_and_named_in_the_adapters_provenance(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    hub = LoopbackHub().start()
    try:
        hub.add("lethe-test/tiny-pipeline").commit(files_of(tiny_lm_dir))
        options = HubOptions(cache_dir=tmp_path / "hf", endpoint=hub.url, offline=False)
        resolved = resolve(HubSource("lethe-test/tiny-pipeline", "main"), options)
        recorded = {
            "base_model_weights_sha256": resolved.weights_sha256,
            "base_model_revision": resolved.source.revision,
        }
        job_id = _queued_job(stack_settings, "tiny-hub", str(resolved.source), spec_fields=recorded)
        store, cache = open_store(stack_settings), BaseLMCache(tmp_path / "lm", options)
        assert run_forget_job(stack_settings, store, cache, job_id) == "succeeded"
        with session_scope(stack_settings.database_url) as session:
            adapter = AdapterRepository(session).get_for_job(job_id)
            assert adapter is not None
        with tarfile.open(fileobj=io.BytesIO(store.get(adapter.object_key)), mode="r:gz") as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("manifest.json"))
            handle = archive.extractfile(member)
            assert handle is not None
            manifest = json.loads(handle.read())
        assert manifest["base_model_source"] == str(resolved.source)
        assert {k: manifest[k] for k in recorded} == recorded

        # Other weights under the same source (the registered digest says otherwise): the job fails, with a code.
        tampered = {**recorded, "base_model_weights_sha256": "f" * 64}
        job_id = _queued_job(stack_settings, "tiny-hub", str(resolved.source), spec_fields=tampered)
        fresh = BaseLMCache(tmp_path / "lm", options)
        assert run_forget_job(stack_settings, store, fresh, job_id) == "failed"
        with session_scope(stack_settings.database_url) as session:
            job = JobRepository(session).get_any_tenant(job_id)
            assert job is not None and job.error_code == "base_model_unavailable"
            assert f"not {'f' * 64} as registered" in (job.error_message or "")
    finally:
        hub.stop()


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


class Killed(BaseException):
    """Stands in for the worker's SIGKILL: nothing catches it, nothing after it runs."""


def _adapter_tensors(store: ObjectStore, session: Session, job_id: uuid.UUID) -> dict[str, torch.Tensor]:
    adapter = AdapterRepository(session).get_for_job(job_id)
    assert adapter is not None
    with tarfile.open(fileobj=io.BytesIO(store.get(adapter.object_key)), mode="r:gz") as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("adapter_model.safetensors"))
        handle = archive.extractfile(member)
        assert handle is not None
        return load_safetensors(handle.read())


def _checkpoint_keys(session: Session, job_id: uuid.UUID) -> list[str]:
    job = JobRepository(session).get_any_tenant(job_id)
    assert job is not None
    slots = [checkpoint_tensors_key(job.tenant_id, job_id, slot) for slot in (0, 1)]
    return [checkpoint_manifest_key(job.tenant_id, job_id), *slots]


def test_a_job_killed_after_a_checkpoint_resumes_from_it_when_delivered_again(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = stack_settings.model_copy(update={"checkpoint_every_steps": 2})
    store, cache = open_store(settings), BaseLMCache(tmp_path)
    # 6 forget-train rows in batches of 2: a 6-step fine-tune, then 12 steps of forgetting evaluated every 5.
    job = {
        "method": {
            "name": "gradient_ascent",
            "params": {"epochs": 4, "batch_size": 2, "evaluate_every": 5, "stop_at_target": False},
        },
        "finetune": {"epochs": 2, "learning_rate": 0.01},
    }
    uninterrupted = _queued_job(settings, "tiny-resume", f"path:{tiny_lm_dir}", **job)
    assert run_forget_job(settings, store, cache, uninterrupted) == "succeeded"

    killed = _queued_job(settings, "tiny-resume", f"path:{tiny_lm_dir}", **job)
    saved: list[tuple[str, int]] = []
    save = JobCheckpoint.save

    def save_then_die(self: JobCheckpoint, snapshot: ForgetSnapshot) -> None:
        save(self, snapshot)
        saved.append((snapshot.stage, snapshot.training.steps))
        if len(saved) == 8:  # the fine-tune's 4 (steps 0, 2, 4, 6), then forgetting's steps 0, 2, 4, 6
            raise Killed

    monkeypatch.setattr(JobCheckpoint, "save", save_then_die)
    with pytest.raises(Killed):
        run_forget_job(settings, store, cache, killed)
    monkeypatch.undo()
    assert saved[-1] == ("forget", 6)
    with session_scope(settings.database_url) as session:
        assert all(store.exists(key) for key in _checkpoint_keys(session, killed)[:2])
        # What the reaper does for a job whose worker died: queue it again, and its id is delivered again.
        session.execute(update(Job).where(Job.id == killed, Job.status == "running").values(status="queued"))

    saved.clear()

    def save_and_record(self: JobCheckpoint, snapshot: ForgetSnapshot) -> None:
        saved.append((snapshot.stage, snapshot.training.steps))
        save(self, snapshot)

    monkeypatch.setattr(JobCheckpoint, "save", save_and_record)
    assert run_forget_job(settings, store, cache, killed) == "succeeded"
    # It went on from forgetting's step 6: the fine-tune, its evaluation and the steps before were not redone.
    assert saved == [("forget", 8), ("forget", 10), ("forget", 12)]

    with session_scope(settings.database_url) as session:
        expected, actual = _adapter_tensors(store, session, uninterrupted), _adapter_tensors(store, session, killed)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[name], actual[name]) for name in expected)

        def measured(job_id: uuid.UUID) -> list[tuple]:
            rows = MetricRepository(session).list_for_job(job_id)
            return sorted((m.stage, m.split, m.name, m.layer or -1, m.value, m.n, m.ci_low, m.ci_high) for m in rows)

        def curve(job_id: uuid.UUID) -> list[tuple]:
            return [(p.split, p.name, p.step, p.value) for p in CurvePointRepository(session).list_for_job(job_id)]

        assert measured(killed) == measured(uninterrupted)
        assert curve(killed) == curve(uninterrupted)
        assert any(step > 6 for _, _, step, _ in curve(killed))
        jobs = [JobRepository(session).get_any_tenant(i) for i in (uninterrupted, killed)]
        evidence = [store.get(j.evidence_key) for j in jobs if j is not None and j.evidence_key is not None]
        assert len(evidence) == 2 and evidence[0] == evidence[1]
        for job_id in (uninterrupted, killed):
            assert not any(store.exists(key) for key in _checkpoint_keys(session, job_id))


@pytest.mark.parametrize("closed_as", ["cancelled", "queued"])
def test_a_job_closed_while_it_runs_keeps_its_checkpoint_only_if_queued_again(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_as: str
) -> None:
    settings = stack_settings.model_copy(update={"checkpoint_every_steps": 1})
    method = {"name": "gradient_ascent", "params": {"epochs": 3, "batch_size": 2}}
    job_id = _queued_job(settings, "tiny-closed", f"path:{tiny_lm_dir}", method=method)
    save = JobCheckpoint.save

    def save_then_close(self: JobCheckpoint, snapshot: ForgetSnapshot) -> None:
        save(self, snapshot)
        with session_scope(settings.database_url) as session:
            if closed_as == "cancelled":
                JobRepository(session).finish(job_id, "cancelled", utcnow())
            else:  # reaped and queued again, as the reaper does for a job whose worker stopped beating
                session.execute(update(Job).where(Job.id == job_id).values(status="queued"))

    monkeypatch.setattr(JobCheckpoint, "save", save_then_close)
    store = open_store(settings)
    assert run_forget_job(settings, store, BaseLMCache(tmp_path), job_id) == "closed"
    with session_scope(settings.database_url) as session:
        manifest, *slots = _checkpoint_keys(session, job_id)
    assert store.exists(manifest) == (closed_as == "queued")
    assert store.exists(slots[0]) == (closed_as == "queued")


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
    # Its results are gone; its checkpoint stays, for attempt 2 to resume from.
    results = [key for key in written if not key.startswith("checkpoints/")]
    assert results and not any(store.exists(key) for key in results)
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and (job.status, job.attempts, job.evidence_key) == ("running", 2, None)
        assert AdapterRepository(session).get_for_job(job_id) is None
        JobRepository(session).finish(job_id, "cancelled", utcnow())


def test_a_job_serves_one_metric_per_key_its_curves_and_whether_forgetting_reached_its_target(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    # Fine-tuned to know the task, then a budget of 2 tiny steps evaluated after each: forget-train stays far above
    # chance + tolerance, and the job must say so.
    method = {
        "name": "gradient_ascent",
        "params": {"max_steps": 2, "evaluate_every": 1, "learning_rate": 1e-6, "batch_size": 2},
    }
    finetune = {"epochs": 10, "learning_rate": 1e-2}
    job_id = _queued_job(stack_settings, "tiny-outcome", f"path:{tiny_lm_dir}", method=method, finetune=finetune)
    store = open_store(stack_settings)
    assert run_forget_job(stack_settings, store, BaseLMCache(tmp_path), job_id) == "succeeded"
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None and job.evidence_key is not None
        served = get_job(session, job.tenant_id, job_id)
        per_example = json.loads(store.get(job.evidence_key))

    keys = [(m.stage, m.split, m.name, m.layer) for m in served.metrics]
    assert len(keys) == len(set(keys))
    assert {(p.split, p.step) for p in served.curves} == {
        (s, step) for s in ("forget_train", "forget_heldout") for step in (1, 2)
    }
    assert {p.name for p in served.curves} == {"accuracy"}

    def metric(stage: str, split: str, name: str) -> MetricOut:
        [m] = [m for m in served.metrics if (m.stage, m.split, m.name, m.layer) == (stage, split, name, None)]
        return m

    # The stage metric is the stored adapter's: its accuracy is the last curve point's, and its Wilson interval is
    # the one of the per-example values the job stored.
    final = metric("forgotten", "forget_train", "accuracy")
    [last] = [p for p in served.curves if p.split == "forget_train" and p.step == 2]
    assert final.value == last.value
    correct = [int(v) for v in per_example["forgotten"]["forget_train"]["correct"]]
    interval = binomtest(sum(correct), len(correct)).proportion_ci(method="wilson")
    assert (final.n, final.ci_low, final.ci_high) == (6, pytest.approx(interval.low), pytest.approx(interval.high))

    forgetting = served.forgetting
    assert forgetting is not None
    assert (forgetting.stop_reason, forgetting.steps, forgetting.target_reached) == ("max_steps", 2, False)
    assert forgetting.score == final.value > forgetting.target
    assert forgetting.summary.startswith("Forgetting did NOT reach its target")
