"""The forget pipeline: catalogue ⇄ engine ⇄ storage for one job.

Sessions are short: claim and close, run the engine with no session open (progress and heartbeats open their
own), then store the objects and write the adapter row, metrics and the final status in one unit of work (the
objects are deleted again if it does not commit; the requested audit's job is enqueued once it has).

While the engine runs, its snapshots are stored as the job's checkpoint (`checkpoints.py`); a job redelivered after
its worker died resumes from it. The checkpoint is deleted when the job ends (succeeded, failed or cancelled), and
kept when it stops only to run again (reaped and queued again).
"""

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from importlib.resources import files
from typing import Any

from safetensors.torch import save as save_safetensors
from sqlalchemy.orm import Session

from lethe.rows import Row, TextRow, rows_from_dicts, split_heldout
from lethe.settings import Settings
from lethe.specs import AuditJobSpec, ForgetJobSpec
from models.db import BrokerUnavailable, session_scope, unit_of_work
from models.repositories import (
    AdapterRepository,
    AuditRepository,
    CurvePointRepository,
    DatasetRepository,
    JobEventRepository,
    JobRepository,
    MetricRepository,
)
from models.tables import Adapter, CurvePoint, Dataset, Metric, utcnow
from storage import ObjectStore
from storage.keys import adapter_key, before_forgetting_key, per_example_key
from worker.engine.forget.run import ForgetOutcome, ForgetPlan, ParentAdapter, ParentMismatch, run_forget
from worker.engine.forget.snapshot import Snapshots
from worker.engine.lm.adapter import adapter_archive, archived_weights
from worker.engine.lm.load import BaseLMCache, LoadedLM
from worker.engine.lm.lora import attached_lora
from worker.pipelines.checkpoints import JobCheckpoint, spec_sha256
from worker.pipelines.jobs import JobFailure, ProgressReporter, held_claim, put_undoable, run_job, run_next_job

log = logging.getLogger("lethe.worker")


@dataclass
class ForgetInputs:
    tenant_id: uuid.UUID
    spec: ForgetJobSpec
    forget_rows: list[Row]
    retain: dict[str, list[Row]]
    dataset_hashes: dict[str, str]
    # A stacked request's parent adapter (weights and its lineage's forget sets), its lineage (parent first) and
    # the hashes of the lineage's forget datasets by split name.
    parent: ParentAdapter | None = None
    lineage: list[uuid.UUID] = field(default_factory=list)
    parent_dataset_hashes: dict[str, str] = field(default_factory=dict)
    # The device and precision this attempt runs with, as its worker recorded them on the job when it claimed it.
    runtime: dict[str, str | None] = field(default_factory=dict)


@contextlib.contextmanager
def leased_base(lm_cache: BaseLMCache, spec: ForgetJobSpec) -> Iterator[LoadedLM]:
    """The forget job's base LM, from the worker's cache, for this job alone until the block ends, with the weights
    the catalogue recorded when the job was accepted (base_model_unavailable otherwise)."""
    with contextlib.ExitStack() as held:
        try:
            base = held.enter_context(
                lm_cache.lease(spec.base_model, spec.base_model_source, spec.base_model_weights_sha256)
            )
        except (OSError, ValueError) as exc:
            raise JobFailure("base_model_unavailable", f"{spec.base_model}: {exc}") from exc
        yield base


def _rows(store: ObjectStore, dataset: Dataset) -> list[Row]:
    lines = store.get(dataset.object_key).decode("utf-8").splitlines()
    return rows_from_dicts(dataset.kind, [json.loads(line) for line in lines if line.strip()])


def general_text_rows() -> list[TextRow]:
    """The general text set utility perplexity is measured on (bundled; see its README)."""
    lines = files("worker.engine").joinpath("general_text/general_text.jsonl").read_text("utf-8").splitlines()
    return [TextRow.from_dict(json.loads(line)) for line in lines if line.strip()]


def load_forget_inputs(settings: Settings, store: ObjectStore, job_id: uuid.UUID) -> ForgetInputs:
    """The forget job's spec and rows (forget set, retain sets by name) with the datasets' hashes, and a stacked
    request's parent adapter."""
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None
        spec = ForgetJobSpec.model_validate(job.spec)
        datasets: dict[uuid.UUID, Dataset] = {}
        for dataset_id in [spec.forget_dataset, *spec.retain_datasets]:
            datasets[dataset_id] = _dataset(session, job.tenant_id, dataset_id)
        lineage = _lineage(session, job.tenant_id, spec.parent_adapter) if spec.parent_adapter is not None else []
    inputs = ForgetInputs(
        tenant_id=job.tenant_id,
        spec=spec,
        forget_rows=_rows(store, datasets[spec.forget_dataset]),
        retain={datasets[i].name: _rows(store, datasets[i]) for i in spec.retain_datasets},
        dataset_hashes={d.name: d.sha256 for d in datasets.values()},
        runtime={"device": job.device, "precision": job.precision},
    )
    if lineage:
        _add_parent(inputs, store, lineage)
    return inputs


@dataclass
class _Ancestor:
    """An adapter of a stacked request's lineage, with what its job forgot and how it split it."""

    adapter: Adapter
    forget_dataset: Dataset
    heldout_fraction: float
    seed: int


def _dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    dataset = DatasetRepository(session).get(tenant_id, dataset_id)
    if dataset is None:
        raise JobFailure("dataset_missing", f"dataset {dataset_id} no longer exists")
    return dataset


def _lineage(session: Session, tenant_id: uuid.UUID, parent_id: uuid.UUID) -> list[_Ancestor]:
    """The parent adapter and its ancestors, parent first, each with its job's forget dataset and split."""
    adapters = AdapterRepository(session)
    parent = adapters.get(tenant_id, parent_id)
    if parent is None:
        raise JobFailure("parent_adapter_missing", f"parent adapter {parent_id} no longer exists")
    lineage = []
    for adapter in [parent, *adapters.ancestors(parent)]:
        job = JobRepository(session).get_any_tenant(adapter.job_id)
        if job is None:
            raise JobFailure("parent_adapter_missing", f"the job of adapter {adapter.id} no longer exists")
        spec = ForgetJobSpec.model_validate(job.spec)
        dataset = _dataset(session, tenant_id, spec.forget_dataset)
        lineage.append(_Ancestor(adapter, dataset, spec.heldout_fraction, spec.seed))
    return lineage


def _add_parent(inputs: ForgetInputs, store: ObjectStore, lineage: list[_Ancestor]) -> None:
    """The parent's weights (read from its archive's safetensors, no LM opened) and each ancestor's forget set,
    split as its own job split it, by dataset name (a name a different split already took gets the adapter's id)."""
    forget_sets: dict[str, tuple[list[Row], list[Row]]] = {}
    taken: dict[str, tuple[uuid.UUID, float, int]] = {}
    for ancestor in lineage:
        split_key = (ancestor.forget_dataset.id, ancestor.heldout_fraction, ancestor.seed)
        name = ancestor.forget_dataset.name
        if taken.get(name) == split_key:
            continue  # the same rows, split the same way, by an earlier generation: scored once
        if name in taken:
            name = f"{name} (adapter {ancestor.adapter.id})"
        taken[name] = split_key
        rows = _rows(store, ancestor.forget_dataset)
        forget_sets[name] = split_heldout(rows, ancestor.heldout_fraction, ancestor.seed)
        inputs.parent_dataset_hashes[name] = ancestor.forget_dataset.sha256
    try:
        weights = archived_weights(store.get(lineage[0].adapter.object_key))
    except ValueError as exc:
        raise JobFailure("parent_adapter_unreadable", f"parent adapter {lineage[0].adapter.id}: {exc}") from exc
    inputs.parent = ParentAdapter(weights, forget_sets)
    inputs.lineage = [ancestor.adapter.id for ancestor in lineage]


def _provenance(
    job_id: uuid.UUID, inputs: ForgetInputs, outcome: ForgetOutcome, base_weights_sha256: str | None
) -> dict[str, Any]:
    spec = inputs.spec
    return {
        "job_id": str(job_id),
        "base_model": spec.base_model,
        "base_model_source": spec.base_model_source,
        # A hub source's commit, and the digest of the weights the job loaded (lethe/base_model_sources.py).
        "base_model_revision": spec.base_model_revision,
        "base_model_weights_sha256": base_weights_sha256,
        "method": spec.method.name,
        "method_params": spec.method.params,
        "finetune": spec.finetune.model_dump() if spec.finetune else None,
        "heldout_fraction": spec.heldout_fraction,
        "seed": spec.seed,
        "dataset_sha256": inputs.dataset_hashes,
        "parent_adapter": str(spec.parent_adapter) if spec.parent_adapter else None,
        "lineage": [str(adapter_id) for adapter_id in inputs.lineage],
        "parent_forget_dataset_sha256": inputs.parent_dataset_hashes,
        "steps": outcome.forgetting.steps,
        "stop_reason": outcome.forgetting.stop_reason,
        "target_reached": outcome.forgetting.target_reached,
        "method_outcome": outcome.method_outcome,
        **inputs.runtime,  # device, precision
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


def run_next_forget_job(
    settings: Settings,
    store: ObjectStore,
    lm_cache: BaseLMCache,
    woken_by: uuid.UUID | None = None,
    enqueue_audit: Callable[[uuid.UUID], None] | None = None,
) -> str:
    """Claim the next queued forget job in fair order (`run_next_job`) and run it as `run_forget_job` does."""
    return run_next_job(
        settings, "forget", lambda job_id: _run_claimed(settings, store, lm_cache, job_id, enqueue_audit), woken_by
    )


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
    checkpoint = JobCheckpoint(store, inputs.tenant_id, job_id, spec_sha256(inputs.spec))
    # Not a `finally`: a BaseException (the worker shutting down) keeps the checkpoint, as a SIGKILL would.
    try:
        _forget(settings, store, lm_cache, job_id, enqueue_audit, report, inputs, checkpoint)
    except JobFailure as failure:
        if failure.code != "job_closed" or _closed_for_good(settings, job_id):
            _delete_checkpoint(checkpoint)
        raise
    except Exception:
        _delete_checkpoint(checkpoint)
        raise
    _delete_checkpoint(checkpoint)


def _closed_for_good(settings: Settings, job_id: uuid.UUID) -> bool:
    """Whether a job closed while it ran has ended (cancelled, failed), rather than queued to run again."""
    with session_scope(settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        return job is None or job.status not in ("queued", "running")


def _delete_checkpoint(checkpoint: JobCheckpoint) -> None:
    # A checkpoint left behind costs storage, not correctness: its failure to go never fails the job.
    try:
        checkpoint.delete()
    except Exception:
        log.exception("job %s: could not delete its checkpoint", checkpoint.job_id)


def _forget(
    settings: Settings,
    store: ObjectStore,
    lm_cache: BaseLMCache,
    job_id: uuid.UUID,
    enqueue_audit: Callable[[uuid.UUID], None] | None,
    report: ProgressReporter,
    inputs: ForgetInputs,
    checkpoint: JobCheckpoint,
) -> None:
    spec = inputs.spec
    snapshots = None
    if settings.checkpoint_every_steps > 0:
        snapshots = Snapshots(settings.checkpoint_every_steps, checkpoint.save, resume=checkpoint.load())
    forget_train, forget_heldout = split_heldout(inputs.forget_rows, spec.heldout_fraction, spec.seed)
    plan = ForgetPlan(
        method=spec.method.name,
        method_params=spec.method.params,
        finetune=spec.finetune,
        probe=spec.probe,
        seed=spec.seed,
    )
    general_text = general_text_rows() if spec.general_text_perplexity else []
    with leased_base(lm_cache, spec) as base:
        try:
            outcome = run_forget(
                base,
                plan,
                forget_train,
                forget_heldout,
                inputs.retain,
                report,
                general_text,
                snapshots,
                parent=inputs.parent,
                on_curve=report.curve,
            )
        except ParentMismatch as exc:
            # The API checks rank, alpha and layers; this is what it could not (a base model of unknown depth).
            raise JobFailure("parent_adapter_mismatch", str(exc)) from exc

        report("storing", 0.0)
        provenance = _provenance(job_id, inputs, outcome, base.weights_sha256)
        with attached_lora(base.lm, outcome.adapter.config, outcome.adapter.state) as peft_lm:
            archive = adapter_archive(
                peft_lm,
                spec.base_model,
                outcome.metrics,
                provenance,
                base_model_source=spec.base_model_source,
                forgetting=outcome.forgetting,
                curves=outcome.curves,
            )
    adapter_id = uuid.uuid4()
    adapter = Adapter(
        id=adapter_id,
        tenant_id=inputs.tenant_id,
        job_id=job_id,
        base_model=spec.base_model,
        object_key=adapter_key(inputs.tenant_id, adapter_id),
        sha256=hashlib.sha256(archive).hexdigest(),
        size_bytes=len(archive),
        parent_adapter_id=spec.parent_adapter,
    )
    evidence = per_example_key(inputs.tenant_id, job_id)
    # A broker that refuses the audit job fails that job, not this one (the unit of work logs it).
    with contextlib.suppress(BrokerUnavailable), unit_of_work(settings.database_url) as work:
        put_undoable(work, store, adapter.object_key, archive, "application/gzip")
        per_example = json.dumps(outcome.per_example, sort_keys=True).encode("utf-8")
        put_undoable(work, store, evidence, per_example, "application/json")
        # The adapter right before forgetting: what an audit restores, patches from and compares against.
        before = save_safetensors({name: t.contiguous() for name, t in outcome.before_forgetting.items()})
        put_undoable(work, store, before_forgetting_key(inputs.tenant_id, job_id), before, "application/octet-stream")
        evidence_size = len(per_example) + len(before)
        audit_job_id = _record_success(work.session, job_id, inputs, outcome, adapter, evidence, evidence_size)
        if audit_job_id is not None and enqueue_audit is not None:
            work.enqueue_after_commit(audit_job_id, partial(enqueue_audit, audit_job_id))


def _record_success(
    session: Session,
    job_id: uuid.UUID,
    inputs: ForgetInputs,
    outcome: ForgetOutcome,
    adapter: Adapter,
    evidence_key: str,
    evidence_size_bytes: int,
) -> uuid.UUID | None:
    """Write the adapter, metrics, curve points, the outcome of forgetting and the final status (and the requested
    audit with its queued job); its job id."""
    claim = held_claim(job_id)
    # The job must still be this worker's attempt (not re-queued and claimed again meanwhile) for any of it to stay.
    jobs = JobRepository(session)
    if not (
        jobs.set_evidence(claim, evidence_key, evidence_size_bytes)
        and jobs.set_forgetting(claim, outcome.forgetting.as_dict())
    ):
        raise JobFailure("job_closed", "the job was closed or re-queued while it ran (reaped or cancelled)")
    AdapterRepository(session).add(adapter)
    # A metric row (a curve point row) is the engine's measurement, field for field.
    MetricRepository(session).add_many(Metric(job_id=job_id, **asdict(m)) for m in outcome.metrics)
    CurvePointRepository(session).add_many(CurvePoint(job_id=job_id, **asdict(p)) for p in outcome.curves)
    succeeded = {
        "adapter_id": str(adapter.id),
        "steps": outcome.forgetting.steps,
        "target_reached": outcome.forgetting.target_reached,
    }
    if not JobRepository(session).finish(job_id, "succeeded", utcnow(), succeeded, attempt=claim.attempt):
        raise JobFailure("job_closed", "the job was closed or re-queued while it ran (reaped or cancelled)")
    audit = inputs.spec.audit
    if audit is None:
        return None
    created = AuditRepository(session).create_with_job(
        inputs.tenant_id, AuditJobSpec(adapter_id=adapter.id, attacks=audit.attacks, thresholds=audit.thresholds)
    )
    JobEventRepository(session).append(job_id, "audit_requested", {"audit_id": str(created.id)})
    return created.job_id
