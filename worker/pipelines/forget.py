"""The forget pipeline: catalogue ⇄ engine ⇄ storage for one job.

Sessions are short: claim and close, run the engine with no session open (progress and heartbeats open their
own), then write the adapter row, metrics and the final status in one transaction.
"""

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from typing import Any

from safetensors.torch import save as save_safetensors

from lethe.rows import Row, TextRow, rows_from_dicts, split_heldout
from lethe.settings import Settings
from lethe.specs import AuditJobSpec, ForgetJobSpec
from models.db import session_scope
from models.repositories import (
    AdapterRepository,
    AuditRepository,
    DatasetRepository,
    JobEventRepository,
    JobRepository,
    MetricRepository,
)
from models.tables import Adapter, Dataset, Metric, utcnow
from storage import ObjectStore
from worker.engine.forget.run import FinetuneConfig, ForgetOutcome, ForgetPlan, run_forget
from worker.engine.lm.adapter import adapter_archive
from worker.engine.lm.load import BaseLMCache, LoadedLM
from worker.pipelines.jobs import JobFailure, ProgressReporter, evidence_key, fail_job, run_job

log = logging.getLogger("lethe.worker")

PER_EXAMPLE = "per_example.json"
BEFORE_FORGETTING = "before_forgetting.safetensors"


@dataclass
class ForgetInputs:
    tenant_id: uuid.UUID
    spec: ForgetJobSpec
    forget_rows: list[Row]
    retain: dict[str, list[Row]]
    dataset_hashes: dict[str, str]


def load_base(lm_cache: BaseLMCache, spec: ForgetJobSpec) -> LoadedLM:
    """The forget job's base LM, from the worker's cache."""
    try:
        return lm_cache.get(spec.base_model, spec.base_model_source)
    except (OSError, ValueError) as exc:
        raise JobFailure("base_model_unavailable", f"{spec.base_model}: {exc}") from exc


def _rows(store: ObjectStore, dataset: Dataset) -> list[Row]:
    lines = store.get(dataset.object_key).decode("utf-8").splitlines()
    return rows_from_dicts(dataset.kind, [json.loads(line) for line in lines if line.strip()])


def general_text_rows() -> list[TextRow]:
    """The general text set utility perplexity is measured on (bundled; see its README)."""
    lines = files("worker.engine").joinpath("general_text/general_text.jsonl").read_text("utf-8").splitlines()
    return [TextRow.from_dict(json.loads(line)) for line in lines if line.strip()]


def load_forget_inputs(settings: Settings, store: ObjectStore, job_id: uuid.UUID) -> ForgetInputs:
    """The forget job's spec and rows (forget set, retain sets by name) with the datasets' hashes."""
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_by_id(job_id)
        assert job is not None
        spec = ForgetJobSpec.model_validate(job.spec)
        datasets: dict[uuid.UUID, Dataset] = {}
        for dataset_id in [spec.forget_dataset, *spec.retain_datasets]:
            dataset = DatasetRepository(session).get(job.tenant_id, dataset_id)
            if dataset is None:
                raise JobFailure("dataset_missing", f"dataset {dataset_id} no longer exists")
            datasets[dataset_id] = dataset
    return ForgetInputs(
        tenant_id=job.tenant_id,
        spec=spec,
        forget_rows=_rows(store, datasets[spec.forget_dataset]),
        retain={datasets[i].name: _rows(store, datasets[i]) for i in spec.retain_datasets},
        dataset_hashes={d.name: d.sha256 for d in datasets.values()},
    )


def _provenance(job_id: uuid.UUID, inputs: ForgetInputs, outcome: ForgetOutcome) -> dict[str, Any]:
    spec = inputs.spec
    return {
        "job_id": str(job_id),
        "base_model": spec.base_model,
        "base_model_source": spec.base_model_source,
        "method": spec.method.name,
        "method_params": spec.method.params,
        "finetune": spec.finetune.model_dump() if spec.finetune else None,
        "heldout_fraction": spec.heldout_fraction,
        "seed": spec.seed,
        "dataset_sha256": inputs.dataset_hashes,
        "steps": outcome.steps,
        "stop_reason": outcome.stop_reason,
        # adapter_archive adds the ML libraries' versions; Lethe's own is known only here.
        "lethe_version": metadata.version("lethe"),
        "created_at": utcnow().isoformat(),
    }


def run_forget_job(
    settings: Settings,
    store: ObjectStore,
    lm_cache: BaseLMCache,
    job_id: uuid.UUID,
    enqueue_audit: Callable[[uuid.UUID], None] | None = None,
) -> str:
    """Run one forget job end to end; returns its final status. Safe to call twice for one job.

    A request that asked for an audit gets its audit job created with the job's results; `enqueue_audit(job_id)`
    then sends it to the broker.
    """
    return run_job(settings, job_id, lambda: _run_claimed(settings, store, lm_cache, job_id, enqueue_audit))


def _run_claimed(
    settings: Settings,
    store: ObjectStore,
    lm_cache: BaseLMCache,
    job_id: uuid.UUID,
    enqueue_audit: Callable[[uuid.UUID], None] | None,
) -> None:
    report = ProgressReporter(settings, job_id)
    report("loading", 0.0)
    inputs = load_forget_inputs(settings, store, job_id)
    spec = inputs.spec
    base = load_base(lm_cache, spec)
    forget_train, forget_heldout = split_heldout(inputs.forget_rows, spec.heldout_fraction, spec.seed)
    plan = ForgetPlan(
        method=spec.method.name,
        method_params=spec.method.params,
        finetune=FinetuneConfig(**spec.finetune.model_dump()) if spec.finetune else None,
        probe=spec.probe,
        seed=spec.seed,
    )
    general_text = general_text_rows() if spec.general_text_perplexity else []
    outcome = run_forget(base, plan, forget_train, forget_heldout, inputs.retain, report, general_text)

    report("storing", 0.0)
    provenance = _provenance(job_id, inputs, outcome)
    card_metrics = [m.__dict__ for m in outcome.metrics]
    archive = adapter_archive(outcome.peft_lm, spec.base_model, card_metrics, provenance)
    adapter_id = uuid.uuid4()
    objects = {
        f"adapters/{inputs.tenant_id}/{adapter_id}.tar.gz": (archive, "application/gzip"),
        evidence_key(inputs.tenant_id, job_id, PER_EXAMPLE): (
            json.dumps(outcome.per_example, sort_keys=True).encode("utf-8"),
            "application/json",
        ),
        # The adapter right before forgetting: what an audit restores, patches from and compares against.
        evidence_key(inputs.tenant_id, job_id, BEFORE_FORGETTING): (
            save_safetensors({name: t.contiguous() for name, t in outcome.before_forgetting.items()}),
            "application/octet-stream",
        ),
    }
    stored: list[str] = []
    try:
        for key, (data, content_type) in objects.items():
            store.put(key, data, content_type=content_type)
            stored.append(key)
        audit_job_id = _record_success(settings, job_id, inputs, outcome, adapter_id, archive, list(objects))
    except Exception:
        for key in stored:
            store.delete(key)
        raise
    if audit_job_id is not None and enqueue_audit is not None:
        enqueue_or_fail(settings, audit_job_id, enqueue_audit)


def enqueue_or_fail(settings: Settings, job_id: uuid.UUID, enqueue: Callable[[uuid.UUID], None]) -> None:
    """Send a job to the broker; a job the broker refuses is failed, never left queued with no message."""
    try:
        enqueue(job_id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job_id)
        fail_job(settings, job_id, "broker_unavailable", f"broker: could not enqueue the job ({exc})")


def _record_success(
    settings: Settings,
    job_id: uuid.UUID,
    inputs: ForgetInputs,
    outcome: ForgetOutcome,
    adapter_id: uuid.UUID,
    archive: bytes,
    keys: list[str],
) -> uuid.UUID | None:
    """Write the adapter, metrics and final status in one transaction (and the requested audit's queued job)."""
    adapter_key, per_example_key = keys[0], keys[1]
    with session_scope(settings.database_url) as session:
        JobRepository(session).set_evidence(job_id, per_example_key)
        AdapterRepository(session).add(
            Adapter(
                id=adapter_id,
                tenant_id=inputs.tenant_id,
                job_id=job_id,
                base_model=inputs.spec.base_model,
                object_key=adapter_key,
                sha256=hashlib.sha256(archive).hexdigest(),
                size_bytes=len(archive),
            )
        )
        MetricRepository(session).add_many(
            Metric(
                job_id=job_id,
                stage=m.stage,
                split=m.split,
                name=m.name,
                value=m.value,
                layer=m.layer,
                step=m.step,
            )
            for m in outcome.metrics
        )
        if not JobRepository(session).finish(job_id, "succeeded", utcnow()):
            raise JobFailure("job_closed", "the job was closed while it ran (reaped or cancelled)")
        JobEventRepository(session).append(job_id, "succeeded", {"adapter_id": str(adapter_id), "steps": outcome.steps})
        audit = inputs.spec.audit
        if audit is None:
            return None
        created = AuditRepository(session).create_with_job(
            inputs.tenant_id, AuditJobSpec(adapter_id=adapter_id, attacks=audit.attacks, thresholds=audit.thresholds)
        )
        JobEventRepository(session).append(job_id, "audit_requested", {"audit_id": str(created.id)})
        return created.job_id
