"""MLflow tracking of a real tiny-LM forget job, in a local MLflow file store, read back with MlflowClient; and a
tracking failure that leaves the job succeeded, logged on a JSON line that carries the job's id."""

import hashlib
import io
import json
import logging
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lethe.logging_config import configure_logging
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AdapterRepository, CurvePointRepository, JobRepository, MetricRepository
from storage import open_store
from tests.worker.test_forget_pipeline import _queued_job
from worker.engine.lm.load import BaseLMCache
from worker.pipelines.forget import run_forget_job

# Two evaluated steps: a curve of two points per forget split.
METHOD = {"name": "gradient_ascent", "params": {"max_steps": 2, "evaluate_every": 1, "batch_size": 2}}


def test_a_forget_job_logs_its_run_params_curves_metrics_and_adapter(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow 3 keeps its file store in maintenance mode, behind this switch (a server or a database is the norm).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    settings = stack_settings.model_copy(update={"mlflow_uri": uri})
    job_id = _queued_job(settings, "tiny-tracked", f"path:{tiny_lm_dir}", method=METHOD)
    store = open_store(settings)
    assert run_forget_job(settings, store, BaseLMCache(tmp_path / "cache"), job_id) == "succeeded"
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        adapter = AdapterRepository(session).get_for_job(job_id)
        metrics = MetricRepository(session).list_for_job(job_id)
        curves = CurvePointRepository(session).list_for_job(job_id)
        assert job is not None and adapter is not None
        tenant_id, spec = job.tenant_id, job.spec

    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("lethe").experiment_id], filter_string=f"tags.`lethe.job_id` = '{job_id}'"
    )
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags["lethe.tenant_id"] == str(tenant_id)
    assert (tags["lethe.adapter_id"], tags["lethe.adapter_sha256"]) == (str(adapter.id), adapter.sha256)
    assert params["method"] == "gradient_ascent"
    assert (params["method_params/max_steps"], params["method_params/evaluate_every"]) == ("2", "1")
    assert params["base_model"] == "tiny-tracked" and params["base_model_source"] == f"path:{tiny_lm_dir}"
    assert params["forget_dataset"] == spec["forget_dataset"]
    assert params["dataset_sha256/forget"] == "0" * 64  # the hash the catalogue holds for the dataset
    assert params["seed"] == "0" and params["heldout_fraction"] == "0.5"

    # The curve, step by step, as the catalogue holds it.
    assert curves
    for split in {p.split for p in curves}:
        history = client.get_metric_history(run.info.run_id, f"curve/{split}/accuracy")
        expected = sorted((p.step, p.value) for p in curves if p.split == split and p.name == "accuracy")
        logged_curve = sorted((m.step, m.value) for m in history)
        assert [step for step, _ in logged_curve] == [step for step, _ in expected]
        assert [value for _, value in logged_curve] == pytest.approx([value for _, value in expected])
    # The stored adapter's metrics with their intervals.
    [final] = [
        m for m in metrics if (m.stage, m.split, m.name, m.layer) == ("forgotten", "forget_train", "accuracy", None)
    ]
    logged = run.data.metrics
    assert logged["forgotten/forget_train/accuracy"] == pytest.approx(final.value)
    assert final.ci_low is not None and final.ci_high is not None and final.n is not None
    assert logged["forgotten/forget_train/accuracy.ci_low"] == pytest.approx(final.ci_low)
    assert logged["forgotten/forget_train/accuracy.ci_high"] == pytest.approx(final.ci_high)
    assert logged["forgotten/forget_train/accuracy.n"] == final.n
    assert len([k for k in logged if not k.startswith("curve/")]) >= len(metrics)

    # The adapter archive, byte for byte the stored object.
    [artifact] = client.list_artifacts(run.info.run_id, "adapter")
    assert artifact.path == f"adapter/adapter-{adapter.id}.tar.gz"
    local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path / "download"))
    data = Path(local).read_bytes()
    assert data == store.get(adapter.object_key)
    assert hashlib.sha256(data).hexdigest() == adapter.sha256


def test_a_tracking_failure_is_a_warning_on_the_jobs_log_not_a_failed_job(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without MLFLOW_ALLOW_FILE_STORE, MLflow 3 refuses a file store: tracking fails for certain.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    settings = stack_settings.model_copy(update={"mlflow_uri": (tmp_path / "refused").as_uri()})
    job_id = _queued_job(settings, "tiny-untracked", f"path:{tiny_lm_dir}", method=METHOD)
    lines = io.StringIO()
    handler = configure_logging("worker", json=True, stream=lines)
    try:
        status = run_forget_job(settings, open_store(settings), BaseLMCache(tmp_path / "cache"), job_id)
    finally:
        logging.getLogger().removeHandler(handler)
    assert status == "succeeded"
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    [warning] = [r for r in records if "MLflow tracking" in r["event"]]
    assert warning["level"] == "warning" and warning["logger"] == "lethe.worker" and warning["service"] == "worker"
    assert warning["job_id"] == str(job_id) and warning["attempt"] == 1
    assert {"timestamp", "event"} <= set(warning)
    # Every line the pipeline logged while it ran the job names it.
    job_lines = [r for r in records if r["logger"] == "lethe.worker"]
    assert len(job_lines) >= 2
    assert all(r.get("job_id") == str(job_id) for r in job_lines), job_lines
    assert uuid.UUID(warning["job_id"]) == job_id
