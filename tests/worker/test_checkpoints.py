"""A job's checkpoint in the object store: it reads back what was saved, a save that dies half-way leaves the
previous one whole, and a checkpoint that is not the job's is ignored."""

import uuid
from pathlib import Path

import pytest
import torch

from storage.keys import checkpoint_manifest_key, checkpoint_tensors_key
from storage.local import LocalObjectStore
from worker.engine.forget.snapshot import ForgetSnapshot
from worker.engine.metrics.values import CurvePoint, MetricValue
from worker.engine.training.snapshot import TrainingSnapshot, rng_state
from worker.pipelines.checkpoints import JobCheckpoint

TENANT = uuid.uuid4()


class Killed(BaseException):
    """Stands in for SIGKILL."""


def snapshot(steps: int) -> ForgetSnapshot:
    training = TrainingSnapshot(
        lora={"layer.lora_A.weight": torch.full((2, 3), float(steps))},
        optimizer={0: {"step": torch.tensor(float(steps)), "exp_avg": torch.ones(2, 3)}},
        rng=rng_state(),
        steps=steps,
        epoch=1,
        batches_done=2,
        retain_passes=1,
        retain_pending=[[3, 1]],
    )
    return ForgetSnapshot(
        stage="forget",
        training=training,
        metrics=[MetricValue("base", "forget_train", "mean", 0.7, n=4, ci_low=0.5, ci_high=0.9)],
        curves=[CurvePoint("forget_train", "accuracy", 2, 0.5)],
        per_example={"base": {"forget_train": {"correct": [1.0, None]}}},
        progress_done=12.5,
        before_forgetting={"layer.lora_A.weight": torch.zeros(2, 3)},
        before_scores={"forget_train": 0.75},
        best={"layer.lora_A.weight": torch.ones(2, 3)},
        best_score=0.25,
        checks=1,
        trained_rows=16,
    )


def assert_same(loaded: ForgetSnapshot | None, saved: ForgetSnapshot) -> None:
    assert loaded is not None
    assert loaded.training.fields() == saved.training.fields()
    expected, actual = saved.training.tensors(), loaded.training.tensors()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    assert torch.equal(loaded.best["layer.lora_A.weight"], saved.best["layer.lora_A.weight"])
    assert (loaded.metrics, loaded.per_example) == (saved.metrics, saved.per_example)
    assert (loaded.best_score, loaded.checks, loaded.trained_rows) == (0.25, 1, 16)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def test_a_saved_checkpoint_loads_back_and_is_deleted_whole(store: LocalObjectStore) -> None:
    job_id = uuid.uuid4()
    writer = JobCheckpoint(store, TENANT, job_id, "spec-hash")
    assert writer.load() is None
    for steps in (2, 4, 6):
        writer.save(snapshot(steps))
    assert_same(JobCheckpoint(store, TENANT, job_id, "spec-hash").load(), snapshot(6))
    writer.delete()
    keys = [checkpoint_manifest_key(TENANT, job_id), *(checkpoint_tensors_key(TENANT, job_id, s) for s in (0, 1))]
    assert not any(store.exists(key) for key in keys)


def test_a_save_killed_before_its_manifest_leaves_the_previous_checkpoint(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = uuid.uuid4()
    writer = JobCheckpoint(store, TENANT, job_id, "spec-hash")
    writer.save(snapshot(2))
    writer.save(snapshot(4))

    def killed(*_args: object, **_kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(store, "replace", killed)
    with pytest.raises(Killed):
        writer.save(snapshot(6))  # its tensors are written, its manifest never is
    assert_same(JobCheckpoint(store, TENANT, job_id, "spec-hash").load(), snapshot(4))


def test_a_save_that_fails_is_logged_and_the_job_goes_on(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = uuid.uuid4()
    writer = JobCheckpoint(store, TENANT, job_id, "spec-hash")
    writer.save(snapshot(2))

    def store_down(*_args: object, **_kwargs: object) -> None:
        raise OSError("store down")

    monkeypatch.setattr(store, "put", store_down)
    writer.save(snapshot(4))
    assert "could not store its checkpoint" in caplog.text
    assert_same(JobCheckpoint(store, TENANT, job_id, "spec-hash").load(), snapshot(2))


def test_a_checkpoint_of_another_spec_or_job_or_with_other_tensors_is_ignored(
    store: LocalObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, other_job = uuid.uuid4(), uuid.uuid4()
    JobCheckpoint(store, TENANT, job_id, "spec-hash").save(snapshot(2))
    assert JobCheckpoint(store, TENANT, job_id, "another-spec").load() is None
    assert "another spec" in caplog.text

    # The job's keys holding another job's checkpoint.
    manifest = store.get(checkpoint_manifest_key(TENANT, job_id))
    store.replace(checkpoint_manifest_key(TENANT, other_job), manifest)
    assert JobCheckpoint(store, TENANT, other_job, "spec-hash").load() is None
    assert f"belongs to job {job_id}" in caplog.text

    # Tensors that are not the ones the manifest was written with.
    tensors = checkpoint_tensors_key(TENANT, job_id, 0)
    store.delete(tensors)
    store.put(tensors, b"not these")
    assert JobCheckpoint(store, TENANT, job_id, "spec-hash").load() is None
    assert "do not match their hash" in caplog.text

    # A manifest that is not JSON.
    store.replace(checkpoint_manifest_key(TENANT, job_id), b"{torn")
    assert JobCheckpoint(store, TENANT, job_id, "spec-hash").load() is None
    assert "not JSON" in caplog.text
