"""Every object key of the store, built here and nowhere else.

A key is `<kind>/<tenant id>/<object id>...`: a tenant's objects of one kind share a prefix (a retention or deletion
pass lists them by it), and every key embeds a fresh UUID, so write-once puts never collide but for a retried job.
A running job's checkpoint is the exception: its objects are rewritten in place, and deleted when the job ends.
"""

import uuid
from typing import Literal


def dataset_key(tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> str:
    """An uploaded dataset's JSONL file."""
    return f"datasets/{tenant_id}/{dataset_id}.jsonl"


def adapter_key(tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> str:
    """An adapter's tar.gz (PEFT files, model card, manifest)."""
    return f"adapters/{tenant_id}/{adapter_id}.tar.gz"


def per_example_key(tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """A forget job's per-example metric values (JSON), the evidence behind its aggregates."""
    return _evidence_key(tenant_id, job_id, "per_example.json")


def before_forgetting_key(tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """A forget job's adapter weights right before forgetting (safetensors): what an audit restores and compares."""
    return _evidence_key(tenant_id, job_id, "before_forgetting.safetensors")


def checkpoint_manifest_key(tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """A running forget job's checkpoint manifest (JSON, replaced whole): the job, its spec's hash, the engine's
    snapshot fields and which tensors slot holds the rest."""
    return f"checkpoints/{tenant_id}/{job_id}/manifest.json"


def checkpoint_tensors_key(tenant_id: uuid.UUID, job_id: uuid.UUID, slot: Literal[0, 1]) -> str:
    """One of a running forget job's two checkpoint tensor slots (safetensors): a new checkpoint is written to the
    slot its manifest does not point at."""
    return f"checkpoints/{tenant_id}/{job_id}/tensors-{slot}.safetensors"


def checkpoint_keys(tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[str]:
    """Every object of a forget job's checkpoint, the manifest first (deleted in this order, no manifest ever
    points at missing tensors)."""
    return [checkpoint_manifest_key(tenant_id, job_id), *(checkpoint_tensors_key(tenant_id, job_id, s) for s in (0, 1))]


def report_key(tenant_id: uuid.UUID, audit_id: uuid.UUID, fmt: Literal["json", "html"]) -> str:
    """An audit's report: the signed JSON, or the HTML page drawn from it."""
    return f"reports/{tenant_id}/{audit_id}/report.{fmt}"


def _evidence_key(tenant_id: uuid.UUID, job_id: uuid.UUID, name: str) -> str:
    return f"evidence/{tenant_id}/{job_id}/{name}"
