"""Experiment tracking: one MLflow run per succeeded forget job, when LETHE_MLFLOW_URI is set.

The catalogue stays the record of a job; the run is a copy for people who compare experiments in MLflow: the
request as params (method and its params, base model, datasets and their hashes), the forgetting curve as step
metrics, the stored adapter's metrics with their intervals, tags that lead back to Lethe (job, tenant, adapter and
its sha256, the submitting request), and the adapter archive as an artifact.

Logged after the job's results are committed, through `MlflowClient` (no global active run, nothing left set in
the process). MLflow is optional (the `tracking` extra, mlflow-skinny): a missing package, an unreachable server or
a refused write is logged as a warning with the job's id and never fails the job, which has already succeeded.
"""

import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe.logging_config import adopt_library_loggers
from lethe.settings import Settings
from worker.engine.metrics.values import CurvePoint, MetricValue

log = logging.getLogger("lethe.worker")

EXPERIMENT = "lethe"
# MLflow's HTTP client retries a refused request up to 7 times with a growing backoff (minutes in all): a worker
# would sit idle that long behind a tracking server that is down. A few quick tries, unless the operator says else.
# MLflow's usage telemetry is off too: a worker reports to the tracking server it was given, and to no one else.
_MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
# MLflow accepts letters, digits and `_ - . / space` in metric and param keys; a split is named after a dataset.
_KEY_UNSAFE = re.compile(r"[^\w\-./ ]")
# MLflow refuses longer param values (6000 characters in its stores); a longer one is cut, and says so.
_MAX_PARAM_CHARS = 6000


@dataclass(frozen=True)
class ForgetRun:
    """What a forget job's run records."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    adapter_id: uuid.UUID
    adapter_sha256: str
    archive: bytes
    # The adapter's provenance (worker/pipelines/forget.py::_provenance): the request and where it ran.
    provenance: dict[str, Any]
    forget_dataset: uuid.UUID
    retain_datasets: list[uuid.UUID]
    metrics: list[MetricValue]
    curves: list[CurvePoint]
    request_id: str | None = None


def _key(*parts: object) -> str:
    return "/".join(_KEY_UNSAFE.sub("_", str(part)) for part in parts if part is not None)


def _param(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 12] + "…(truncated)"


def run_params(run: ForgetRun) -> dict[str, str]:
    """The run's params: the request, one param per method param, one per dataset hash."""
    p = run.provenance
    params: dict[str, object] = {
        "method": p["method"],
        "base_model": p["base_model"],
        "base_model_source": p["base_model_source"],
        "base_model_revision": p.get("base_model_revision"),
        "base_model_weights_sha256": p.get("base_model_weights_sha256"),
        "forget_dataset": str(run.forget_dataset),
        "retain_datasets": [str(d) for d in run.retain_datasets],
        "finetune": p.get("finetune"),
        "heldout_fraction": p["heldout_fraction"],
        "seed": p["seed"],
        "parent_adapter": p.get("parent_adapter"),
        "device": p.get("device"),
        "precision": p.get("precision"),
        "lethe_version": p.get("lethe_version"),
    }
    for name, value in (p.get("method_params") or {}).items():
        params[_key("method_params", name)] = value
    for name, sha256 in (p.get("dataset_sha256") or {}).items():
        params[_key("dataset_sha256", name)] = sha256
    return {_key(name): _param(value) for name, value in params.items() if value is not None}


def run_metrics(run: ForgetRun) -> list[tuple[str, float, int]]:
    """(key, value, step) of every figure: curve points at their step; the stored adapter's metrics (with n and
    interval bounds) at step 0, keyed `stage/split/name[.layer_L]` and `...name.n`, `.ci_low`, `.ci_high`.

    A key is never another key's folder (`a/b` beside `a/b/n`): MLflow's file store keeps each key as a file path."""
    figures = [(_key("curve", point.split, point.name), point.value, point.step) for point in run.curves]
    for metric in run.metrics:
        key = _key(metric.stage, metric.split, metric.name)
        if metric.layer is not None:
            key += f".layer_{metric.layer}"
        figures.append((key, metric.value, 0))
        for suffix, value in (("n", metric.n), ("ci_low", metric.ci_low), ("ci_high", metric.ci_high)):
            if value is not None:
                figures.append((f"{key}.{suffix}", float(value), 0))
    return figures


def track_forget_job(settings: Settings, run: ForgetRun) -> str | None:
    """Log the job's MLflow run at LETHE_MLFLOW_URI; its run id, or None when tracking is off or failed (logged)."""
    if not settings.mlflow_uri:
        return None
    try:
        run_id = _log_run(settings.mlflow_uri, run)
    except Exception as exc:
        log.warning(
            "job %s: MLflow tracking at %s failed, the job is unaffected (%s: %s)",
            run.job_id,
            settings.mlflow_uri,
            type(exc).__name__,
            exc,
        )
        return None
    log.info("job %s: MLflow run %s logged at %s", run.job_id, run_id, settings.mlflow_uri)
    return run_id


def _log_run(uri: str, run: ForgetRun) -> str:
    for name, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    adopt_library_loggers(("mlflow",))  # its import gave it a handler of its own

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(EXPERIMENT)
        except Exception:
            # Another worker created it meanwhile.
            found = client.get_experiment_by_name(EXPERIMENT)
            if found is None:
                raise
            experiment_id = found.experiment_id
    tags = {
        "lethe.job_id": str(run.job_id),
        "lethe.job_kind": "forget",
        "lethe.tenant_id": str(run.tenant_id),
        "lethe.adapter_id": str(run.adapter_id),
        "lethe.adapter_sha256": run.adapter_sha256,
    }
    if run.request_id is not None:
        tags["lethe.request_id"] = run.request_id
    created = client.create_run(experiment_id, run_name=f"forget {run.job_id}", tags=tags)
    run_id = str(created.info.run_id)
    try:
        now_ms = int(time.time() * 1000)
        params = [Param(name, value) for name, value in run_params(run).items()]
        metrics = [Metric(key, value, now_ms, step) for key, value, step in run_metrics(run)]
        # MLflow's stores take at most 100 params and 1000 metrics per batch.
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.log_batch(run_id, tags=[RunTag("mlflow.note.content", "A Lethe forget job; the catalogue holds it.")])
        with tempfile.TemporaryDirectory(prefix="lethe-mlflow-") as directory:
            archive = Path(directory) / f"adapter-{run.adapter_id}.tar.gz"
            archive.write_bytes(run.archive)
            client.log_artifact(run_id, str(archive), artifact_path="adapter")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
