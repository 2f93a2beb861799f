"""Deleting a tenant's datasets, jobs, adapters and audits: what a deletion takes with it, when it refuses, in which
order it goes, and the signed receipt and tombstones it leaves.

What each deletion takes with it (every resource removed leaves a tombstone: a read of it answers 410 Gone naming
when it went and the deletion, whose signed receipt `GET /v1/deletions/{id}` returns):

- dataset: its row and its JSONL object. 409 while a queued or running job reads it: a forget job naming it as its
  forget or a retain set, a stacked forget job whose lineage forgot it, an audit of an adapter whose job read it.
  A finished job that used it is allowed to lose it: the job keeps its metrics, curves and evidence (per-example
  values are scores, not the rows), and its spec still names the dataset's id; but an audit of its adapter, or a
  request stacked on it, is refused afterwards (422: its forget dataset no longer exists).
- job: 409 while queued or running (cancel it first: `POST /v1/jobs/{id}/cancel`). A forget job takes its events,
  metrics, curve points, evidence objects (per-example values, the pre-forgetting state), any checkpoint left, and
  its adapter with everything an adapter takes. An audit job is its audit's job: deleting it deletes the audit.
- adapter: 409 while adapters are stacked on it (delete those first), a queued or running forget job stacks on it,
  or a queued or running audit audits it. Takes its archive and its audits (each as below). The forget job that
  made it stays, with its metrics and evidence (delete the job to remove those too); the job's history (its
  `succeeded` event) still names the adapter's id.
- audit: 409 while its job is queued or running. Takes its attack results, diagnostics, JSON and HTML reports and
  its audit job (with the job's events).
- each also drops the stored responses of the Idempotency-Keys whose request created what it removed: a retry of
  that request then creates anew instead of replaying an id that is gone.

Order: rows first, objects after the commit. In one transaction the rows go, a tombstone is written for each
resource, and a `deletions` row holds the signed receipt and the object keys still to delete (`pending_keys`);
after the commit the objects are deleted and `pending_keys` emptied. A crash in between leaves no row pointing at
a missing object (the API answers 410 for what went, never a 200 or a 500 for a broken link), only objects that no
row points at, which the deletion still lists: the maintenance pass (`finish_deletions`) deletes them. Deleting
the objects first would, on a crash, leave rows that the API serves pointing at nothing.

The tenant's row is locked first (as the quota checks do), so two deletions of one tenant run one after the other:
the second sees the first's tombstone and answers 410.
"""

import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from api.errors import Conflict, Gone, LetheError, NotFound
from api.pagination import page_of
from api.schemas import DeletionPage, SignedReceiptOut
from api.services.receipts import signed_receipt
from lethe.settings import Settings
from lethe.specs import ForgetJobSpec
from models.db import UnitOfWork, session_scope
from models.repositories import (
    AdapterRepository,
    AuditRepository,
    DatasetRepository,
    DeletionRepository,
    JobRepository,
    PageQuery,
    TenantRepository,
)
from models.tables import Adapter, Audit, Dataset, Deletion, Job, utcnow
from storage import ObjectStore
from storage.base import ObjectNotFoundError
from storage.keys import before_forgetting_key, checkpoint_keys, per_example_key, report_key

log = logging.getLogger("lethe.api")

OPEN_STATUSES = ("queued", "running")
# A deletion's own request deletes its objects right after its commit; the maintenance pass takes over only from
# deletions older than this, so the two rarely delete the same keys (doing so twice is harmless).
FINISH_AFTER_S = 60.0


@dataclass
class Cascade:
    """What one deletion removes, gathered while its rows go: the resources (the requested one first), the object
    keys to delete after the commit, the receipt's entries for those objects, and the rows each table lost."""

    session: Session
    store: ObjectStore
    tenant_id: uuid.UUID
    resources: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)
    rows: Counter[str] = field(default_factory=Counter)

    def take_object(self, key: str, sha256: str | None = None, size_bytes: int | None = None) -> None:
        """Delete `key` after the commit and list it on the receipt: with the catalogue's sha256 and size where it
        records them (datasets, adapters), else hashed from the store now. An object the store does not hold (a
        checkpoint of a job that ended cleanly) is not listed."""
        self.keys.append(key)
        if sha256 is not None and size_bytes is not None:
            self.objects.append({"key": key, "sha256": sha256, "size_bytes": size_bytes})
            return
        digest, size = hashlib.sha256(), 0
        try:
            for chunk in self.store.iter_chunks(key):
                digest.update(chunk)
                size += len(chunk)
        except ObjectNotFoundError:
            return
        self.objects.append({"key": key, "sha256": digest.hexdigest(), "size_bytes": size})

    def take_rows(self, counts: dict[str, int]) -> None:
        self.rows.update(counts)

    @property
    def deletions(self) -> DeletionRepository:
        return DeletionRepository(self.session)


def missing(session: Session, tenant_id: uuid.UUID, resource: str, resource_id: uuid.UUID) -> LetheError:
    """The error for a tenant's resource that is not there: 410 naming when and why it was deleted, or 404 for one
    that never was (or is another tenant's)."""
    deletion = deletion_of(session, tenant_id, resource, resource_id)
    if deletion is None:
        return NotFound(f"{resource} {resource_id} not found")
    return Gone(f"{resource} {resource_id} was {deleted(deletion)}")


def deletion_of(session: Session, tenant_id: uuid.UUID, resource: str, resource_id: uuid.UUID) -> Deletion | None:
    """The deletion that removed the tenant's resource; None if it never was (or is another tenant's)."""
    deletions = DeletionRepository(session)
    tombstone = deletions.tombstone(tenant_id, resource, resource_id)
    return deletions.get_for_tenant(tenant_id, tombstone.deletion_id) if tombstone is not None else None


def deleted(deletion: Deletion) -> str:
    """`deleted at <when> by request (deletion <id>)`, or `by the tenant's evidence retention`."""
    why = "by the tenant's evidence retention" if deletion.reason == "retention" else "by request"
    return f"deleted at {deletion.deleted_at.isoformat()} {why} (deletion {deletion.id})"


def delete_dataset(
    work: UnitOfWork, store: ObjectStore, settings: Settings, tenant_id: uuid.UUID, dataset_id: uuid.UUID
) -> SignedReceiptOut:
    return _delete(work, store, settings, tenant_id, "dataset", dataset_id, DatasetRepository, _take_dataset)


def delete_job(
    work: UnitOfWork, store: ObjectStore, settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> SignedReceiptOut:
    return _delete(work, store, settings, tenant_id, "job", job_id, JobRepository, _take_job)


def delete_adapter(
    work: UnitOfWork, store: ObjectStore, settings: Settings, tenant_id: uuid.UUID, adapter_id: uuid.UUID
) -> SignedReceiptOut:
    return _delete(work, store, settings, tenant_id, "adapter", adapter_id, AdapterRepository, _take_adapter)


def delete_audit(
    work: UnitOfWork, store: ObjectStore, settings: Settings, tenant_id: uuid.UUID, audit_id: uuid.UUID
) -> SignedReceiptOut:
    return _delete(work, store, settings, tenant_id, "audit", audit_id, AuditRepository, _take_audit)


def _delete(
    work: UnitOfWork,
    store: ObjectStore,
    settings: Settings,
    tenant_id: uuid.UUID,
    resource: str,
    resource_id: uuid.UUID,
    repository: Callable[[Session], Any],
    take: Callable[[Cascade, Any], None],
) -> SignedReceiptOut:
    session = work.session
    TenantRepository(session).lock(tenant_id)
    row = repository(session).get(tenant_id, resource_id)
    if row is None:
        raise missing(session, tenant_id, resource, resource_id)
    cascade = Cascade(session, store, tenant_id)
    take(cascade, row)
    return bury(work, settings, cascade, resource, resource_id, "request")


def bury(
    work: UnitOfWork, settings: Settings, cascade: Cascade, resource: str, resource_id: uuid.UUID, reason: str
) -> SignedReceiptOut:
    """Sign the receipt, write it with the tombstones in the cascade's transaction, and delete the objects once that
    has committed."""
    deletion_id, now = uuid.uuid4(), utcnow()
    receipt = {
        "id": str(deletion_id),
        "tenant_id": str(cascade.tenant_id),
        "resource": resource,
        "resource_id": str(resource_id),
        "reason": reason,
        "deleted_at": now.isoformat(),
        "resources": [{"resource": kind, "id": str(row_id)} for kind, row_id in cascade.resources],
        "rows": {table: count for table, count in sorted(cascade.rows.items()) if count},
        "objects": cascade.objects,
    }
    signed = signed_receipt(settings, work.session, receipt)
    deletion = Deletion(
        id=deletion_id,
        tenant_id=cascade.tenant_id,
        resource=resource,
        resource_id=resource_id,
        reason=reason,
        deleted_at=now,
        receipt=signed,
        pending_keys=cascade.keys,
    )
    cascade.deletions.bury(deletion, cascade.resources)
    work.after_commit(partial(delete_objects, settings, cascade.store, deletion_id, list(cascade.keys)))
    return SignedReceiptOut.model_validate(signed)


def delete_objects(settings: Settings, store: ObjectStore, deletion_id: uuid.UUID, keys: Sequence[str]) -> None:
    """Delete a committed deletion's objects, then record that none is pending (a failure leaves them pending for
    the maintenance pass)."""
    for key in keys:
        store.delete(key)
    with session_scope(settings.database_url) as session:
        DeletionRepository(session).finish(deletion_id)


def finish_deletions(settings: Settings, store: ObjectStore, now: datetime, limit: int = 100) -> int:
    """Delete the objects of deletions that a crash or a store outage left pending; how many deletions were
    finished."""
    with session_scope(settings.database_url) as session:
        pending = [
            (deletion.id, list(deletion.pending_keys))
            for deletion in DeletionRepository(session).unfinished(now - timedelta(seconds=FINISH_AFTER_S), limit)
        ]
    finished = 0
    for deletion_id, keys in pending:
        log.warning("deletion %s: deleting %d objects its request left behind", deletion_id, len(keys))
        try:
            delete_objects(settings, store, deletion_id, keys)
        except Exception:
            log.exception("deletion %s: its objects could not be deleted; the next pass tries again", deletion_id)
            continue
        finished += 1
    return finished


# --- the cascade, resource by resource --------------------------------------------------------------------------------


def _take_dataset(cascade: Cascade, dataset: Dataset) -> None:
    readers = [
        job
        for job in JobRepository(cascade.session).open_jobs(cascade.tenant_id)
        if dataset.id in _reads(cascade.session, job)
    ]
    if readers:
        named = ", ".join(f"{job.kind} job {job.id} ({job.status})" for job in readers)
        raise Conflict(f"dataset {dataset.id} is read by {named}: wait for it to finish or cancel it, then delete")
    cascade.resources.append(("dataset", dataset.id))
    cascade.take_object(dataset.object_key, dataset.sha256, dataset.size_bytes)
    cascade.take_rows(cascade.deletions.purge_dataset(dataset.id))
    _forget_idempotency_keys(cascade, "upload_dataset", "id", dataset.id)


def _reads(session: Session, job: Job) -> set[uuid.UUID]:
    """The datasets a job reads: a forget job's forget and retain sets and, stacked, its lineage's forget sets; an
    audit job, those of the forget job that made the adapter it audits."""
    if job.kind == "audit":
        audit = AuditRepository(session).get_for_job(job.id)
        adapter = AdapterRepository(session).get(job.tenant_id, audit.adapter_id) if audit is not None else None
        forget_job = JobRepository(session).get(job.tenant_id, adapter.job_id) if adapter is not None else None
        return _reads(session, forget_job) if forget_job is not None else set()
    spec = ForgetJobSpec.model_validate(job.spec)
    datasets = {spec.forget_dataset, *spec.retain_datasets}
    parent = AdapterRepository(session).get(job.tenant_id, spec.parent_adapter) if spec.parent_adapter else None
    if parent is not None:
        for adapter in [parent, *AdapterRepository(session).ancestors(parent)]:
            ancestor_job = JobRepository(session).get(job.tenant_id, adapter.job_id)
            if ancestor_job is not None:
                datasets.add(ForgetJobSpec.model_validate(ancestor_job.spec).forget_dataset)
    return datasets


def _take_job(cascade: Cascade, job: Job) -> None:
    if job.status in OPEN_STATUSES:
        raise Conflict(f"job {job.id} is {job.status}: cancel it first (POST /v1/jobs/{job.id}/cancel), then delete")
    if job.kind == "audit":
        audit = AuditRepository(cascade.session).get_for_job(job.id)
        if audit is not None:
            _take_audit(cascade, audit)
            return
    cascade.resources.append(("job", job.id))
    adapter = AdapterRepository(cascade.session).get_for_job(job.id)
    if adapter is not None:
        _take_adapter(cascade, adapter)
    if job.kind == "forget":
        cascade.take_object(per_example_key(job.tenant_id, job.id))
        cascade.take_object(before_forgetting_key(job.tenant_id, job.id))
        for key in checkpoint_keys(job.tenant_id, job.id):
            cascade.take_object(key)
    cascade.take_rows(cascade.deletions.purge_job(job.id))
    _forget_idempotency_keys(cascade, "submit_forget_request", "job_id", job.id)


def _take_adapter(cascade: Cascade, adapter: Adapter) -> None:
    session = cascade.session
    children = AdapterRepository(session).children(adapter.id)
    if children:
        named = ", ".join(str(child.id) for child in children)
        raise Conflict(f"adapter {adapter.id} has adapters stacked on it ({named}): delete those first")
    for job in JobRepository(session).open_jobs(cascade.tenant_id):
        if job.kind == "forget" and job.spec.get("parent_adapter") == str(adapter.id):
            raise Conflict(f"adapter {adapter.id} is the parent of forget job {job.id} ({job.status}): cancel it first")
    audits = AuditRepository(session).list_for_adapter(adapter.id)
    for audit in audits:
        _refuse_open_audit(session, audit)
    for audit in audits:
        _take_audit(cascade, audit)
    cascade.resources.append(("adapter", adapter.id))
    cascade.take_object(adapter.object_key, adapter.sha256, adapter.size_bytes)
    cascade.take_rows(cascade.deletions.purge_adapter(adapter.id))


def _refuse_open_audit(session: Session, audit: Audit) -> Job:
    job = JobRepository(session).get(audit.tenant_id, audit.job_id)
    assert job is not None, "an audit always has its job"
    if job.status in OPEN_STATUSES:
        raise Conflict(
            f"audit {audit.id} of adapter {audit.adapter_id} is {job.status}: cancel its job first "
            f"(POST /v1/jobs/{job.id}/cancel)"
        )
    return job


def _take_audit(cascade: Cascade, audit: Audit) -> None:
    job = _refuse_open_audit(cascade.session, audit)
    cascade.resources += [("audit", audit.id), ("job", job.id)]
    for fmt in ("json", "html"):
        cascade.take_object(report_key(audit.tenant_id, audit.id, fmt))  # type: ignore[arg-type]
    cascade.take_rows(cascade.deletions.purge_audit(audit.id))
    cascade.take_rows(cascade.deletions.purge_job(job.id))
    _forget_idempotency_keys(cascade, "submit_audit", "audit_id", audit.id)


def _forget_idempotency_keys(cascade: Cascade, operation: str, field_name: str, resource_id: uuid.UUID) -> None:
    count = cascade.deletions.purge_idempotency_keys(cascade.tenant_id, operation, field_name, resource_id)
    cascade.take_rows({"idempotency_keys": count})


# --- reading receipts -------------------------------------------------------------------------------------------------


def get_deletion(session: Session, tenant_id: uuid.UUID, deletion_id: uuid.UUID) -> SignedReceiptOut:
    deletion = DeletionRepository(session).get_for_tenant(tenant_id, deletion_id)
    if deletion is None:
        raise NotFound(f"deletion {deletion_id} not found")
    return SignedReceiptOut.model_validate(deletion.receipt)


def list_deletions(
    session: Session, tenant_id: uuid.UUID, page: PageQuery, resource: str | None, reason: str | None
) -> DeletionPage:
    """A page of the tenant's signed deletion receipts, newest first."""
    rows = DeletionRepository(session).page(tenant_id, page, resource, reason)
    deletions, next_cursor = page_of(rows, page, lambda d: (d.deleted_at, d.id))
    return DeletionPage(items=[SignedReceiptOut.model_validate(d.receipt) for d in deletions], next_cursor=next_cursor)
