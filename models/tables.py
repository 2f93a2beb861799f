"""The catalogue's tables (ORM only; every query lives in models/repositories.py)."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use models.tables.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    # Named constraints so Alembic migrations are deterministic on SQLite and Postgres alike.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[str]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Days a finished job's evidence (per-example values, pre-forgetting state, checkpoints) is kept; None: forever.
    # The API's maintenance pass deletes older evidence with a signed receipt (api/services/deletions.py).
    evidence_retention_days: Mapped[int | None] = mapped_column(Integer, default=None)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    # The prefix finds the row; only the SHA-256 of the whole key is stored.
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BaseModel(Base):
    """A base model (language model) a forget request can name, global to the installation. Not pydantic's
    `BaseModel`: the catalogue's word for the concept is `base_model` in the API, the tables and the CLI alike."""

    __tablename__ = "base_models"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # `bundled:<name>`, `path:/abs/dir` or `hf:org/name@<commit>` (safetensors only; lethe/base_model_sources.py).
    source: Mapped[str] = mapped_column(Text)
    # A hub source's commit (the 40 hex digits its source is pinned to); None for other sources.
    revision: Mapped[str | None] = mapped_column(String(100), default=None)
    # The revision a hub source was registered with (`main`, a tag, or the commit itself), before it was pinned.
    requested_revision: Mapped[str | None] = mapped_column(String(200), default=None)
    # lethe/base_model_sources.py::weights_sha256 of its safetensors files, recorded when it was registered; a worker
    # refuses weights that do not match it. None when unknown then (bundled: converted by the worker).
    weights_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    description: Mapped[str] = mapped_column(Text, default="")
    # Decoder blocks of its LM, read when it is registered; None when the source did not say (then the worker
    # checks layer params once it has loaded the LM).
    n_layers: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), index=True)
    stage: Mapped[str] = mapped_column(String(40), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    spec: Mapped[dict[str, Any]] = mapped_column()
    error_code: Mapped[str | None] = mapped_column(String(60), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    # Claims so far; the attempt number is the claim's token: a worker writes only while it is still the job's.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # When a running job's progress last advanced (its stage changed or its fraction grew): the stall clock.
    progress_at: Mapped[datetime | None] = mapped_column(default=None)
    # When a message was last sent for this queued job (None: not yet); the relay re-sends after a timeout.
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    # Object key of the per-example metric values (JSON), written with the job's results.
    evidence_key: Mapped[str | None] = mapped_column(Text, default=None)
    # Bytes of the job's evidence objects (per-example values, pre-forgetting state): counted in the tenant's quota.
    evidence_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # A succeeded forget job's outcome of forgetting (lethe.forgetting.Forgetting.as_dict): target, whether the
    # adapter reached it, why forgetting stopped, its steps, the forget splits whose score rose. Null otherwise.
    forgetting: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Where and how the latest attempt computes, written by its worker as it claims the job: the device
    # ("cuda:0 (NVIDIA H200)", "cpu (AMD EPYC 7B13)") and the precision ("bf16-autocast", "fp32", ...; see
    # worker/engine/lm/placement.py). Null until a worker claims it.
    device: Mapped[str | None] = mapped_column(String(200), default=None)
    precision: Mapped[str | None] = mapped_column(String(60), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    """One typed, ordered event of a job: the audit trail (and later the SSE stream)."""

    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Metric(Base):
    """One value per (job, stage, split, name, layer): a stage's measurement (the `forgotten` stage's is the stored
    adapter's). Points measured during forgetting are `CurvePoint`s."""

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(40))
    split: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(60))
    value: Mapped[float] = mapped_column(Float)
    layer: Mapped[int | None] = mapped_column(Integer, default=None)
    # Rows the value rests on and its 95% interval (worker/engine/metrics/intervals.py); null where none is drawn.
    n: Mapped[int | None] = mapped_column(Integer, default=None)
    ci_low: Mapped[float | None] = mapped_column(Float, default=None)
    ci_high: Mapped[float | None] = mapped_column(Float, default=None)


# Unique with a NULL layer too: a plain UNIQUE treats NULLs as distinct on SQLite (and on Postgres without NULLS NOT
# DISTINCT), so the key indexes coalesce(layer, -1); layers are >= 0.
Index(
    "uq_metrics_key",
    Metric.job_id,
    Metric.stage,
    Metric.split,
    Metric.name,
    func.coalesce(Metric.layer, -1),
    unique=True,
)


class CurvePoint(Base):
    """A split's primary score measured during a forget job's forgetting, after `step` optimiser steps."""

    __tablename__ = "curve_points"
    __table_args__ = (UniqueConstraint("job_id", "split", "name", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    split: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(60))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), unique=True)
    base_model: Mapped[str] = mapped_column(String(100))
    object_key: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    # Lineage: the adapter a stacked forget request continued (its job started from this parent's weights).
    parent_adapter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("adapters.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Audit(Base):
    """A recovery-attack audit of one adapter: its job, thresholds, overall verdict and the signed report."""

    __tablename__ = "audits"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), unique=True)
    adapter_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("adapters.id"), index=True)
    thresholds: Mapped[dict[str, Any]] = mapped_column()
    # Set when the audit job succeeds: robust | shallow | inconclusive.
    verdict: Mapped[str | None] = mapped_column(String(20), default=None)
    report_key: Mapped[str | None] = mapped_column(Text, default=None)
    report_html_key: Mapped[str | None] = mapped_column(Text, default=None)
    # HMAC-SHA256 of the report's canonical JSON (hex) and the id of the key that made it.
    signature: Mapped[str | None] = mapped_column(String(64), default=None)
    signing_key_id: Mapped[str | None] = mapped_column(String(16), default=None)
    # Bytes of the report's JSON and HTML objects: counted in the tenant's quota.
    report_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Attacks that had nothing to measure on the rows: [{"name", "reason"}].
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Why the inconclusive attacks did not conclude (too_few_rows, nothing_forgotten, no_control,
    # interval_spans_threshold), each once, whatever the verdict.
    verdict_reasons: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditResult(Base):
    """One attack's result in an audit: the worst variant's numbers, every variant's, curves and the verdict."""

    __tablename__ = "audit_results"
    __table_args__ = (UniqueConstraint("audit_id", "attack"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audits.id"), index=True)
    attack: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column()
    metric: Mapped[str] = mapped_column(String(60))
    split: Mapped[str] = mapped_column(String(200))
    effect: Mapped[str] = mapped_column(String(20))
    before: Mapped[float] = mapped_column(Float)
    after_forgetting: Mapped[float] = mapped_column(Float)
    after_attack: Mapped[float] = mapped_column(Float)
    recovery: Mapped[float | None] = mapped_column(Float, default=None)
    excess_drop: Mapped[float | None] = mapped_column(Float, default=None)
    # The score of guessing where it has one (accuracy on choice rows): recovery counts from max(after, chance).
    chance: Mapped[float | None] = mapped_column(Float, default=None)
    worst_variant: Mapped[str] = mapped_column(String(200))
    # The worst variant's rows and its intervals' level (95% Bonferroni-corrected over the attack's variants);
    # ci_low / ci_high bound `recovery` (trigger: `excess_drop`). The never-learned control's recovery and the
    # excess over it (relearn, in_context, probe when the forget job fine-tuned first), each with its interval.
    n: Mapped[int | None] = mapped_column(Integer, default=None)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)
    ci_low: Mapped[float | None] = mapped_column(Float, default=None)
    ci_high: Mapped[float | None] = mapped_column(Float, default=None)
    control_recovery: Mapped[float | None] = mapped_column(Float, default=None)
    control_ci_low: Mapped[float | None] = mapped_column(Float, default=None)
    control_ci_high: Mapped[float | None] = mapped_column(Float, default=None)
    excess_recovery: Mapped[float | None] = mapped_column(Float, default=None)
    excess_ci_low: Mapped[float | None] = mapped_column(Float, default=None)
    excess_ci_high: Mapped[float | None] = mapped_column(Float, default=None)
    verdict: Mapped[str] = mapped_column(String(20))
    # Set when the verdict is inconclusive: too_few_rows | nothing_forgotten | no_control | interval_spans_threshold.
    inconclusive_reason: Mapped[str | None] = mapped_column(String(40), default=None)
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    curves: Mapped[dict[str, Any]] = mapped_column()


class AuditDiagnostic(Base):
    """One diagnostic's result in an audit (restore, patch): the KRS of every (component, window of layers) variant.

    Not a verdict: a diagnostic says where forgetting changed the LM, and never enters the audit's verdict.
    """

    __tablename__ = "audit_diagnostics"
    __table_args__ = (UniqueConstraint("audit_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audits.id"), index=True)
    name: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column()
    # krs: the Knowledge Recovery Score of Hong et al. on the answer logits.
    metric: Mapped[str] = mapped_column(String(60))
    split: Mapped[str] = mapped_column(String(200))
    rows: Mapped[int] = mapped_column(Integer)
    # Rows whose answer logits forgetting left unchanged: they have no KRS.
    rows_undefined: Mapped[int] = mapped_column(Integer)
    # [{"name", "component", "first_layer", "last_layer", "krs", "n", "ci_low", "ci_high"}]
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # Components that measured nothing, and why: {component: reason}.
    skipped_components: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)


class Worker(Base):
    """A worker process's liveness: it beats every heartbeat interval while it runs (jobs or not)."""

    __tablename__ = "workers"

    # hostname:pid, as Celery names a worker node.
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[datetime] = mapped_column()
    beat_at: Mapped[datetime] = mapped_column(index=True)


class IdempotencyKey(Base):
    """The first response to a creating POST sent with an `Idempotency-Key`, to replay to a retry of it.

    A table of its own rather than the old `jobs.idempotency_key` column: an upload creates a dataset and no job,
    a replay must return the first response exactly (status and body), and a key is scoped to its tenant and
    operation, so one unique constraint over (tenant, operation, key) decides which of two concurrent requests
    creates. The row is written in the same transaction as what the request created: a request that fails leaves
    no key behind.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "operation", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    # The route's operation id: `upload_dataset`, `submit_forget_request`, `submit_audit`.
    operation: Mapped[str] = mapped_column(String(60))
    key: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the request (canonical JSON of the validated body; the file, name and kind of an upload).
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column()
    # Keys expire LETHE_IDEMPOTENCY_TTL_S after this.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Deletion(Base):
    """One deletion (a tenant's request, or the retention pass) and its signed receipt.

    `receipt` is what `DELETE` answered: `{"receipt": {...}, "signature": {...}}` (api/services/receipts.py).
    `pending_keys` are the object keys the deletion removes from the store after its rows are committed; it is
    emptied once they are gone, so a maintenance pass finishes what a crash between the commit and the store cut off.
    """

    __tablename__ = "deletions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    # dataset | job | adapter | audit | evidence (a job's evidence objects, the job itself kept)
    resource: Mapped[str] = mapped_column(String(20))
    resource_id: Mapped[uuid.UUID] = mapped_column()
    # request | retention
    reason: Mapped[str] = mapped_column(String(20))
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    receipt: Mapped[dict[str, Any]] = mapped_column()
    pending_keys: Mapped[list[str]] = mapped_column(JSON, default=list)


class Tombstone(Base):
    """A resource that is gone: a deletion's resource and each one it took with it. A read of it answers 410 Gone
    naming when (and by which deletion) it went, rather than 404."""

    __tablename__ = "tombstones"
    __table_args__ = (UniqueConstraint("resource", "resource_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    resource: Mapped[str] = mapped_column(String(20))
    resource_id: Mapped[uuid.UUID] = mapped_column()
    deletion_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deletions.id"), index=True)
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow)
