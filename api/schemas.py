"""Request and response bodies of the v1 API."""

import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import UploadFile
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel

from lethe.attacks import Thresholds
from lethe.queue import JobKind
from lethe.rows import DatasetKind

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# Enum-like strings typed as enums, so the spec lists their values and a generated SDK types them; each mirrors a
# registry of the core (tests/api/test_schemas.py keeps them equal).
MetricFamily = Literal["choice", "qa", "text", "privacy", "utility", "probe"]  # lethe.metrics.FAMILIES
MetricDirection = Literal["remembers", "forgets", "neutral"]  # lethe.metrics.DIRECTIONS
IntervalKind = Literal["wilson", "bootstrap", "paired_bootstrap", "none"]  # lethe.metrics.INTERVALS
StopReason = Literal["target", "heldout_below_chance", "utility_floor", "max_steps", "epochs"]  # STOP_REASONS


class DatasetOut(BaseModel):
    id: uuid.UUID
    name: str
    kind: DatasetKind
    rows: int
    sha256: str
    created_at: datetime


class DatasetUpload(BaseModel):
    """The multipart form of a dataset upload (a model, so the spec and a generated SDK name it)."""

    # `format: binary` beside pydantic's contentMediaType: what SDK generators read as a file to upload.
    file: UploadFile = Field(description="JSONL, one row per line.", json_schema_extra={"format": "binary"})
    name: str = Field(description="A name for the dataset (retain metrics are keyed by it).")
    kind: DatasetKind = Field(description="Row schema of the file.")


class BaseModelIn(BaseModel):
    """A base model to register (or re-point: a name registered before gets the new source)."""

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The name forget requests use: letters, digits, '.', '_', '-'.",
    )
    source: str = Field(
        min_length=1,
        max_length=1000,
        description="`hf:org/name@revision` (a hub repository with safetensors weights; the revision, `main` when "
        "left out, is pinned to its commit), `path:/abs/dir` (a safetensors checkpoint directory the API and the "
        "workers can read) or `bundled:<id>`.",
    )
    description: str = Field(default="", max_length=2000)


class BaseModelOut(BaseModel):
    name: str
    source: str = Field(description="Where its weights come from; a hub source is pinned to a commit.")
    revision: str | None = Field(description="A hub source's commit (40 hex digits); null for other sources.")
    requested_revision: str | None = Field(
        description="The revision a hub source was registered with (a branch, tag or commit), before pinning."
    )
    weights_sha256: str | None = Field(
        description="sha256 over its safetensors files: of the lines `<file sha256>  <file name>` sorted by name, "
        "as `LC_ALL=C sha256sum <files> | sha256sum` prints it; workers refuse other weights. null: not known when "
        "registered (the worker's digest is in each adapter's provenance)."
    )
    description: str
    n_layers: int | None = Field(
        description="Decoder blocks of the LM: a param naming a layer takes 0..n_layers-1; null = not known until a "
        "worker loads the LM (then the job fails if a layer does not exist)."
    )


class MethodOut(BaseModel):
    name: str
    description: str
    kinds: list[DatasetKind] = Field(description="Dataset kinds the method can forget.")
    params: dict[str, Any] = Field(description="JSON schema of the method's params, with defaults.")
    experimental: bool = Field(
        description="The method is reconstructed from incomplete sources (its paper's equations or code unreadable)."
    )
    reconstructed: str | None = Field(
        description="For an experimental method: what Lethe reconstructed and how; null otherwise."
    )


class MetricSpecOut(BaseModel):
    name: str
    family: MetricFamily
    kinds: list[DatasetKind] = Field(description="Dataset kinds the metric is computed for.")
    description: str
    higher_means: MetricDirection = Field(description="Which way the metric moves with knowledge.")
    interval: IntervalKind = Field(
        description="The 95% interval its values carry (ci_low, ci_high): wilson (Wilson score interval of a "
        "proportion), bootstrap (seeded percentile bootstrap over rows), paired_bootstrap (rows scored before and "
        "after forgetting resampled together), none."
    )


class FinetuneIn(BaseModel):
    """Fine-tune the adapter on forget-train first, so the model knows the task (the seed protocol)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(ge=1, le=100)
    learning_rate: float = Field(gt=0, le=1)


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A method from GET /v1/methods.")
    params: dict[str, Any] = Field(default_factory=dict, description="Validated against the method's schema.")


class JobError(BaseModel):
    code: str
    message: str


class AttackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="An attack from GET /v1/attacks.")
    params: dict[str, Any] = Field(default_factory=dict, description="Validated against the attack's schema.")


class AuditSpecIn(BaseModel):
    """The attacks to run and the thresholds that judge them; no attacks = every attack that applies."""

    model_config = ConfigDict(extra="forbid")

    attacks: list[AttackIn] | None = Field(
        None,
        max_length=20,
        description=(
            "Attacks to run, in order; null = every attack that applies, defaults. Diagnostics (restore, patch: "
            "`diagnostic: true` in GET /v1/attacks) are named here too; they run after the attacks and are reported "
            "under the audit's `diagnostics`, never in its verdict."
        ),
    )
    thresholds: Thresholds = Field(default_factory=lambda: Thresholds.model_validate({}))


class AuditRequestIn(AuditSpecIn):
    adapter_id: uuid.UUID = Field(description="An adapter a forget request of this tenant produced.")


class AuditAccepted(BaseModel):
    audit_id: uuid.UUID
    job_id: uuid.UUID
    status: JobStatus


class SignedReport(BaseModel):
    """An audit's signed report, as `lethe verify-report FILE` checks it."""

    report: dict[str, Any] = Field(description="The report: the audit's results, its adapter and forget job.")
    signature: dict[str, Any] = Field(description="The signature over the report's canonical JSON, and its key.")


class AttackOut(BaseModel):
    name: str
    description: str
    kinds: list[DatasetKind] = Field(description="Forget-set kinds the attack applies to.")
    needs_retain: bool = Field(description="Whether the audited forget job must have had retain datasets.")
    diagnostic: bool = Field(
        description=(
            "A diagnostic (restore, patch) says where forgetting changed the LM: requested in `attacks` like an "
            "attack, reported under the audit's `diagnostics` (a KRS per component and window of layers), never "
            "judged and never part of the verdict."
        )
    )
    controlled: bool = Field(
        description="The attack can succeed by ordinary learning: it also runs on a never-learned control (the base "
        "LM, when the forget job fine-tuned first) and its verdict reads the excess recovery; without a control it is "
        "never shallow (reason no_control)."
    )
    verdict_rule: str = Field(description="How a result of this attack becomes robust, shallow or inconclusive.")
    params: dict[str, Any] = Field(description="JSON schema of the attack's params, with defaults.")


Verdict = Literal["robust", "shallow", "inconclusive"]
InconclusiveReason = Literal["too_few_rows", "nothing_forgotten", "no_control", "interval_spans_threshold"]
_CI = "95% paired-bootstrap interval over the rows, at the Bonferroni level `confidence`; null where undefined."


class VariantOut(BaseModel):
    name: str
    layer: int | None
    before: float | None
    after_forgetting: float | None
    after_attack: float | None
    recovery: float | None
    excess_drop: float | None
    n: int | None = Field(None, description="Rows the variant's scores are the means of (the same rows each time).")
    confidence: float | None = Field(None, description="Level of its intervals: 1 − 0.05/m over the m variants.")
    ci_low: float | None = Field(None, description="Lower end of recovery's (trigger: excess_drop's) " + _CI)
    ci_high: float | None = Field(None, description="Upper end of recovery's (trigger: excess_drop's) " + _CI)
    control_recovery: float | None = Field(
        None,
        description="The never-learned control's gain from the same attack, in recovery's units: (control after "
        "attack − control before attack) / (before − floor), clipped to [0, 1]; null without a control.",
    )
    control_ci_low: float | None = Field(None, description=_CI)
    control_ci_high: float | None = Field(None, description=_CI)
    excess_recovery: float | None = Field(
        None, description="recovery − control_recovery: what the attack brings back beyond ordinary learning."
    )
    excess_ci_low: float | None = Field(None, description=_CI)
    excess_ci_high: float | None = Field(None, description=_CI)


class AttackResultOut(BaseModel):
    attack: str
    params: dict[str, Any]
    metric: str = Field(description="The score measured (higher = remembers more).")
    split: str
    effect: Literal["recovery", "damage"]
    before: float = Field(description="The LM before forgetting (the worst variant's reference).")
    after_forgetting: float = Field(description="The forgotten LM, not attacked.")
    after_attack: float = Field(description="The forgotten LM under the attack's worst variant.")
    recovery: float | None = Field(
        description="(after_attack − floor) / (before − floor) clipped to [0, 1], floor = max(after_forgetting, "
        "chance); null when undefined (forgetting removed less than min_forgetting) and for trigger."
    )
    excess_drop: float | None = Field(description="Trigger only: retain drop beyond the drop before forgetting.")
    chance: float | None = Field(
        description="The score of guessing (accuracy on choice rows): recovery counts from max(after_forgetting, "
        "chance), so bringing a below-chance LM back to guessing is no recovery."
    )
    n: int | None = Field(None, description="Rows of the worst variant; null for results judged before intervals.")
    confidence: float | None = Field(None, description="Level of the worst variant's intervals (Bonferroni).")
    ci_low: float | None = Field(None, description="Lower end of recovery's (trigger: excess_drop's) " + _CI)
    ci_high: float | None = Field(None, description="Upper end of recovery's (trigger: excess_drop's) " + _CI)
    control_recovery: float | None = Field(None, description="The worst variant's never-learned control's recovery.")
    control_ci_low: float | None = Field(None, description=_CI)
    control_ci_high: float | None = Field(None, description=_CI)
    excess_recovery: float | None = Field(
        None, description="recovery − control_recovery; the verdict of relearn, in_context and probe reads it."
    )
    excess_ci_low: float | None = Field(None, description=_CI)
    excess_ci_high: float | None = Field(None, description=_CI)
    worst_variant: str = Field(description="The variant that decided the verdict (or came closest to shallow).")
    verdict: Verdict = Field(
        description="shallow: an interval (of the excess, where the attack has a control) lies above the threshold; "
        "robust: every variant's lies below it; otherwise inconclusive (GET /v1/attacks: verdict_rule)."
    )
    inconclusive_reason: InconclusiveReason | None = Field(None, description="Why an inconclusive result is.")
    variants: list[VariantOut]
    curves: dict[str, list[list[float | None]]] = Field(
        description="Per variant [step, score] points (relearn; `control <variant>` for the never-learned control)."
    )


class DiagnosticVariantOut(BaseModel):
    name: str = Field(description="component@first-last, e.g. value_vectors@3-7.")
    component: str
    first_layer: int = Field(description="The window's first decoder block (0-based).")
    last_layer: int = Field(description="The window's last decoder block (inclusive).")
    krs: float | None = Field(
        description="Knowledge Recovery Score, mean over rows of 1 − MSE(before, intervened) / MSE(before, "
        "forgotten) on the answer logits; null when no row has one (forgetting left every answer's logits unchanged)."
    )
    n: int = Field(description="Rows the mean rests on.")
    ci_low: float | None = Field(description="95% interval of the mean (seeded bootstrap over rows).")
    ci_high: float | None


class DiagnosticOut(BaseModel):
    """A diagnostic's result: where forgetting changed the LM. Never judged; not part of the verdict."""

    name: str = Field(description="restore or patch (GET /v1/attacks, `diagnostic: true`).")
    params: dict[str, Any]
    metric: str = Field(description="krs: the Knowledge Recovery Score of Hong et al. (arXiv 2410.06606).")
    split: str
    rows: int = Field(description="Rows of the split measured.")
    rows_undefined: int = Field(description="Rows whose answer logits forgetting left unchanged: no KRS.")
    skipped_components: dict[str, str] = Field(description="Components that measured nothing, and why.")
    variants: list[DiagnosticVariantOut]


class AuditOut(BaseModel):
    id: uuid.UUID
    adapter_id: uuid.UUID
    job_id: uuid.UUID
    status: JobStatus
    stage: str
    progress: float
    error: JobError | None
    thresholds: dict[str, Any]
    attacks: list[AttackIn] = Field(description="The attacks requested, with their params as run (defaults filled).")
    verdict: Verdict | None = Field(
        description="shallow if any attack is; robust if every conclusive attack is and there is one; else "
        "inconclusive; null until the audit succeeds."
    )
    verdict_reasons: list[InconclusiveReason] = Field(
        default_factory=list,
        description="Why the inconclusive attacks did not conclude, each reason once, whatever the verdict.",
    )
    results: list[AttackResultOut]
    diagnostics: list[DiagnosticOut] = Field(
        description=(
            "Diagnostics (restore, patch): where forgetting changed the LM, never judged. The adapter sits on a public "
            "base model and can be removed outright, so these measure localization, not depth."
        )
    )
    skipped: list[dict[str, str]] = Field(
        description="Attacks and diagnostics that had nothing to measure on the rows: name, reason."
    )
    signature: str | None = Field(
        description="Ed25519 signature (base64url, unpadded) of the report's RFC 8785 canonical JSON."
    )
    signing_key_id: str | None = Field(description="The key that signed it: an id of GET /v1/signing-keys.")
    created_at: datetime


# Signing keys (GET /v1/signing-keys, POST /v1/signing-keys/rotate).
class Ed25519Jwk(BaseModel):
    """An Ed25519 public key as an RFC 8037 JWK; `kid` is its RFC 7638 thumbprint."""

    kty: Literal["OKP"] = "OKP"
    crv: Literal["Ed25519"] = "Ed25519"
    x: str = Field(description="The 32-byte public key, base64url without padding.")
    kid: str
    alg: Literal["EdDSA"] = "EdDSA"
    use: Literal["sig"] = "sig"


class SigningKeyOut(BaseModel):
    key_id: str = Field(description="The RFC 7638 JWK thumbprint of the public key; signatures name it.")
    algorithm: Literal["Ed25519"]
    jwk: Ed25519Jwk
    public_key_pem: str = Field(description="The same public key as a PEM SubjectPublicKeyInfo.")
    created_at: datetime
    valid_from: datetime = Field(description="It signs from this time on.")
    retired_at: datetime | None = Field(
        description="When a rotation replaced it; null for the current key. What it signed before stays valid."
    )
    current: bool


class SigningKeysOut(BaseModel):
    """Every key this installation ever signed with, oldest first: save it to verify reports offline."""

    keys: list[SigningKeyOut]


class RotationOut(BaseModel):
    current: SigningKeyOut
    retired: list[str] = Field(description="The ids of the keys this rotation retired.")


class ForgetRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="A name from GET /v1/base-models.")
    forget_dataset: uuid.UUID
    retain_datasets: list[uuid.UUID] = Field(default_factory=list, max_length=20)
    heldout_fraction: float = Field(
        0.5, gt=0, lt=1, description="Share of the forget rows held out (forget_heldout): same task, unseen."
    )
    finetune: FinetuneIn | None = None
    method: MethodIn
    probe: bool = Field(
        True,
        description=(
            "Train per-layer linear probes before and after forgetting (choice rows; qa rows with "
            "perturbed_answers: true vs perturbed answer)."
        ),
    )
    general_text_perplexity: bool = Field(
        True, description="Also measure perplexity on Lethe's bundled general text set (split utility:general_text)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    audit: AuditSpecIn | None = Field(
        None, description="Audit the adapter right after forgetting: the audit's id appears on the job (audit_ids)."
    )
    parent_adapter: uuid.UUID | None = Field(
        None,
        description=(
            "Stack this request on an earlier adapter of yours (GET /v1/adapters/{id}): the job starts from the base "
            "LM with the parent's LoRA weights, so the new adapter is the parent continued and applies to the base "
            "LM alone. The parent must be on the same base model, with the same method.params lora_rank, lora_alpha "
            "and LoRA layers. The stage `parent` measures that starting point (the LM before forgetting unless "
            "`finetune` is given: a fine-tune then continues from the parent's weights); every stage also scores "
            "the forget sets of the parent and its ancestors, split as their own jobs split them "
            "(parent_forget_train:<name>, parent_forget_heldout:<name>), to show that forgetting did not bring them "
            "back. The new adapter records its parent (parent_adapter_id, lineage)."
        ),
    )


class PerExampleValues(RootModel[dict[str, dict[str, dict[str, list[float | None]]]]]):
    """Per-example values behind a job's metrics: {stage: {split: {metric: [one per row, null where none]}}}."""


class JobAccepted(BaseModel):
    job_id: uuid.UUID
    status: JobStatus


class MetricOut(BaseModel):
    stage: str = Field(description="base | parent (stacked requests) | finetuned | forgotten")
    split: str = Field(
        description="forget_train | forget_heldout | retain:<dataset name> | utility:general_text | "
        "parent_forget_train:<dataset name> | parent_forget_heldout:<dataset name> (stacked requests)"
    )
    name: str = Field(description="A metric from GET /v1/metrics.")
    value: float
    layer: int | None = Field(description="Layer of a probe metric (0 = embeddings); null otherwise.")
    n: int | None = Field(description="Rows the value rests on; null where not recorded.")
    ci_low: float | None = Field(
        description="Lower end of the value's 95% interval (GET /v1/metrics says which kind); null where none."
    )
    ci_high: float | None = Field(description="Upper end of the value's 95% interval; null where none.")


class CurvePointOut(BaseModel):
    split: str = Field(
        description="forget_train | forget_heldout | retain:<dataset name> | parent_forget_train:<dataset name> | "
        "parent_forget_heldout:<dataset name>"
    )
    name: str = Field(description="The split's primary metric: accuracy | answer_probability | text_probability.")
    step: int = Field(description="Optimiser steps of forgetting done when it was measured.")
    value: float


class ScoreRiseOut(BaseModel):
    split: str
    before: float = Field(description="The split's primary score right before forgetting.")
    after: float = Field(description="Its score after forgetting (the delivered adapter's).")
    ci_low: float = Field(description="Lower end of the after-score's 95% interval: above `before`.")
    ci_high: float


class ForgettingOut(BaseModel):
    """Whether forgetting worked, judged on the delivered adapter."""

    metric: str = Field(description="forget_train's primary metric, the one the target applies to.")
    target: float = Field(
        description="The score forgetting aims at: chance + target_tolerance (choice rows), else forget_heldout's "
        "score before forgetting + target_tolerance."
    )
    score: float = Field(description="forget_train's score after forgetting.")
    target_reached: bool = Field(description="score <= target.")
    stop_reason: StopReason = Field(description="Why forgetting stopped (lethe/forgetting.py STOP_REASONS).")
    steps: int = Field(description="Optimiser steps forgetting took.")
    rose: list[ScoreRiseOut] = Field(
        description="Forget splits whose score after forgetting lies above the score before, beyond its interval."
    )
    summary: str = Field(description="The above in words: says when the target was not reached or a score rose.")


class JobOut(BaseModel):
    id: uuid.UUID
    kind: JobKind
    status: JobStatus
    stage: str
    progress: float = Field(description="Estimated fraction of the whole job done, 0 to 1.")
    error: JobError | None
    adapter_id: uuid.UUID | None
    audit_ids: list[uuid.UUID] = Field(
        description="Audits of this job's adapter (forget jobs); the job's own audit (audit jobs)."
    )
    metrics: list[MetricOut] = Field(
        description="One value per (stage, split, name, layer); the forgotten stage's are the delivered adapter's."
    )
    curves: list[CurvePointOut] = Field(description="Primary scores measured during forgetting, by split and step.")
    forgetting: ForgettingOut | None = Field(description="A succeeded forget job's outcome of forgetting; else null.")
    device: str | None = Field(
        description="The device the latest attempt ran on, with its model, e.g. `cuda:0 (NVIDIA H200)`, "
        "`cuda:0-1 (2× NVIDIA H200)` for a base model spread over two GPUs, `cpu (AMD EPYC 7B13)`; null until a "
        "worker claims the job."
    )
    precision: str | None = Field(
        description="How the latest attempt computed: `fp32`, `bf16-autocast` (fp32 weights, matmuls in bf16), "
        "`bf16-autocast, bf16 linear weights` (the decoder blocks' linear weights stored in bf16, the rest fp32: a "
        "CPU) or `bf16-autocast, bf16 weights` (weights stored in bf16, as on a GPU); the LM head's scores are fp32 "
        "in every case. Null until a worker claims the job."
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    evidence_deleted_at: datetime | None = Field(
        default=None,
        description="When the tenant's evidence retention deleted the job's per-example values and pre-forgetting "
        "state (the per-example route then answers 410); null while they are kept.",
    )


class JobSummary(BaseModel):
    id: uuid.UUID
    kind: JobKind
    status: JobStatus
    stage: str
    progress: float
    created_at: datetime


# Job events (GET /v1/jobs/{job_id}/events): the SSE stream's events and the JSON page of the same.
JobEventType = Literal[
    "queued", "running", "stage", "progress", "requeued", "audit_requested", "succeeded", "failed", "cancelled"
]
# The events after which a job has ended: the stream closes once it has sent one (and what came with it).
TERMINAL_EVENT_TYPES: tuple[JobEventType, ...] = ("succeeded", "failed", "cancelled")


class JobEventOut(BaseModel):
    """One event of a job, in the order it happened."""

    seq: int = Field(description="The event's number within its job: 1, 2, 3, ... (the SSE `id`).")
    type: JobEventType = Field(description="What happened (the SSE `event`); `data` depends on it.")
    created_at: datetime
    data: dict[str, Any] = Field(
        description="queued: {method} (forget) or {attacks} (audit); running: {worker, attempt, device, "
        "precision}; stage: {stage}; progress: {stage, fraction (0 to 1, of the whole attempt), curve: {split, "
        "name, step, value} (the latest point of forget_train's forgetting curve) or null}; requeued: {attempt, "
        "reason}; audit_requested: {audit_id}; succeeded: {adapter_id, steps, target_reached} (forget) or "
        "{audit_id, verdict} (audit); failed: {error_code, error_message}; cancelled: {}."
    )


class JobEventPage(BaseModel):
    """A page of a job's events, oldest first."""

    items: list[JobEventOut]
    next_after: int = Field(description="Pass as `after` for the next page: the last seq here, or the given `after`.")
    terminal: bool = Field(
        description="The job has ended and every one of its events is in this page or an earlier one: stop polling."
    )


class AdapterOut(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID
    base_model: str
    sha256: str
    size_bytes: int
    parent_adapter_id: uuid.UUID | None = Field(
        description="The adapter this one continued (a forget request's parent_adapter); null for a root adapter."
    )
    lineage: list[uuid.UUID] = Field(
        description="The adapters this one descends from: its parent first, up to the root; empty for a root."
    )


# Pages of the list routes (api/pagination.py): one named class per list, so generated clients get typed items.
NEXT_CURSOR_DESCRIPTION = "Pass as `cursor` to get the next page; null on the last page."


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None = Field(description=NEXT_CURSOR_DESCRIPTION)


class JobPage(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None = Field(description=NEXT_CURSOR_DESCRIPTION)


class AdapterSummary(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID
    base_model: str
    sha256: str
    size_bytes: int
    parent_adapter_id: uuid.UUID | None
    created_at: datetime


class AdapterPage(BaseModel):
    items: list[AdapterSummary]
    next_cursor: str | None = Field(description=NEXT_CURSOR_DESCRIPTION)


class AuditSummary(BaseModel):
    id: uuid.UUID
    adapter_id: uuid.UUID
    job_id: uuid.UUID
    status: JobStatus = Field(description="The audit job's status.")
    verdict: Verdict | None = Field(description="Null until the audit succeeds.")
    created_at: datetime


class AuditPage(BaseModel):
    items: list[AuditSummary]
    next_cursor: str | None = Field(description=NEXT_CURSOR_DESCRIPTION)


# Deletions (api/services/deletions.py): the signed receipt a DELETE answers. The receipt's fields are strings as
# signed (ids, ISO 8601 times), so a client verifies the very bytes it received.
DeletedResource = Literal["dataset", "job", "adapter", "audit", "evidence"]
DeletionReason = Literal["request", "retention"]


class ReceiptResourceOut(BaseModel):
    resource: DeletedResource
    id: str


class ReceiptObjectOut(BaseModel):
    key: str = Field(description="The object's key in the store.")
    sha256: str = Field(description="SHA-256 (hex) of the object's bytes.")
    size_bytes: int


class ReceiptOut(BaseModel):
    id: str = Field(description="The deletion's id (GET /v1/deletions/{deletion_id}).")
    tenant_id: str
    resource: DeletedResource = Field(
        description="What was deleted: `evidence` is a job's evidence objects (the job kept)."
    )
    resource_id: str
    reason: DeletionReason
    deleted_at: str = Field(description="When, ISO 8601 in UTC.")
    resources: list[ReceiptResourceOut] = Field(
        description="Every resource the deletion removed, the requested one included; each now answers 410."
    )
    rows: dict[str, int] = Field(description="Catalogue rows deleted, by table.")
    objects: list[ReceiptObjectOut] = Field(description="Objects deleted from the store.")


class SignedReceiptOut(BaseModel):
    receipt: ReceiptOut
    signature: dict[str, Any] = Field(
        description="The server's signature over the receipt's canonical JSON (sorted keys, no whitespace, UTF-8), "
        "checked as a report's is."
    )


class DeletionPage(BaseModel):
    items: list[SignedReceiptOut]
    next_cursor: str | None = Field(description=NEXT_CURSOR_DESCRIPTION)


class RetentionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evidence_retention_days: int | None = Field(
        ge=1,
        le=36500,
        description="Days a finished job's evidence (per-example values, pre-forgetting state) is kept; null keeps "
        "it forever.",
    )


class RetentionOut(BaseModel):
    tenant: str
    evidence_retention_days: int | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="catalogue, broker, storage: `ok` or the error.")


# --- API keys (the admin API: api/routes/api_keys.py) ---------------------------------------------------------------

ApiKeyScope = Literal["read", "submit", "admin"]


class ApiKeyOut(BaseModel):
    """A key as an operator sees it: its prefix (the key's first characters), never the key or its hash."""

    id: uuid.UUID
    tenant: str
    prefix: str
    scopes: list[ApiKeyScope]
    name: str
    status: Literal["active", "revoked", "expired"]
    created_at: datetime
    last_used_at: datetime | None = Field(description="The latest use, to the minute (recorded once a minute).")
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: uuid.UUID | None = Field(description="The key a rotation made to replace this one.")


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself: shown this once, only its hash is stored.")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ApiKeyIn(BaseModel):
    tenant: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The tenant the key acts for (made if new): letters, digits, '.', '_', '-'.",
    )
    scopes: list[ApiKeyScope] = Field(
        default=["read", "submit"],
        min_length=1,
        max_length=3,
        description="`read`: the tenant's GET operations; `submit`: its POST and DELETE operations; `admin`: the "
        "installation's operations (base models, API keys, signing keys), which implies neither of the others.",
    )
    name: str = Field(default="", max_length=200, description="A label: who or what holds the key.")
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the key stops working (ISO 8601 with its offset, in the future)."
    )


class ApiKeyRotateIn(BaseModel):
    grace_s: int = Field(
        default=0,
        ge=0,
        le=30 * 24 * 3600,
        description="Seconds the old key keeps working beside the new one (0: revoked now); at most 30 days.",
    )
