"""Forget requests: validate against the catalogue and the method registry, then create a queued job."""

import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.errors import InvalidInput, format_validation_errors
from api.schemas import ForgetRequestIn
from api.services.audits import validated_audit_spec
from api.services.base_models import check_named_layers
from api.services.quotas import check_cost, check_room_for_job
from lethe.costs import forget_request_cost
from lethe.logging_config import current_request_id
from lethe.methods import METHODS
from lethe.registry import UnknownNameError
from lethe.rows import heldout_count
from lethe.settings import Settings
from lethe.specs import FinetuneSpec, ForgetJobSpec, MethodChoice
from models.repositories import AdapterRepository, BaseModelRepository, DatasetRepository, JobRepository
from models.tables import Adapter, BaseModel, Dataset, Job


def _dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID, field: str) -> Dataset:
    dataset = DatasetRepository(session).get(tenant_id, dataset_id)
    if dataset is None:
        raise InvalidInput(f"{field}: dataset {dataset_id} not found")
    return dataset


def _method_params(
    name: str, params: dict[str, Any], forget_kind: str, has_retain: bool, base_model: BaseModel
) -> dict[str, Any]:
    try:
        spec = METHODS.get(name)
    except UnknownNameError as exc:
        raise InvalidInput(f"method.name: unknown method {name!r} (allowed: {', '.join(METHODS.names())})") from exc
    if forget_kind not in spec.kinds:
        raise InvalidInput(
            f"method.name: {name} cannot forget {forget_kind} rows (it supports: {', '.join(spec.kinds)})"
        )
    try:
        parsed = spec.parse(params)
    except ValidationError as exc:
        errors = [{**e, "loc": ("method", "params", *e["loc"])} for e in exc.errors()]
        raise InvalidInput(format_validation_errors(errors)) from exc
    check_named_layers(base_model, parsed.named_layers(), "method.params.")
    if not has_retain and parsed.utility_floor is not None:
        raise InvalidInput("method.params.utility_floor: needs at least one retain dataset to measure utility on")
    if not has_retain and spec.needs_retain(parsed):
        raise InvalidInput(f"retain_datasets: {name} with these params trains on retain data; give at least one")
    return parsed.model_dump(mode="json")


def _parent_adapter(
    session: Session,
    tenant_id: uuid.UUID,
    parent_id: uuid.UUID,
    base_model: BaseModel,
    method: MethodChoice,
) -> Adapter:
    """The tenant's adapter a stacked request continues, checked to fit it: on the same base model (name and the
    source it was trained from), with the same LoRA rank, alpha and layers (the child's LoRA starts from its
    weights). InvalidInput naming the field otherwise."""
    adapter = AdapterRepository(session).get(tenant_id, parent_id)
    if adapter is None:
        raise InvalidInput(f"parent_adapter: adapter {parent_id} not found")
    job = JobRepository(session).get(tenant_id, adapter.job_id)
    if job is None:
        raise InvalidInput(f"parent_adapter: the job that made adapter {parent_id} no longer exists")
    parent = ForgetJobSpec.model_validate(job.spec)
    if adapter.base_model != base_model.name or parent.base_model_source != base_model.source:
        raise InvalidInput(
            f"parent_adapter: adapter {parent_id} was trained on base model {adapter.base_model!r} "
            f"({parent.base_model_source}), not on {base_model.name!r} ({base_model.source}); a stacked request "
            "continues its parent on the same base model"
        )
    ours, theirs = method.parsed(), parent.method.parsed()
    for field in ("lora_rank", "lora_alpha"):
        if getattr(ours, field) != getattr(theirs, field):
            raise InvalidInput(
                f"method.params.{field}: {getattr(ours, field)} differs from the parent adapter's "
                f"{getattr(theirs, field)}; a stacked request continues its parent's LoRA, so they must be equal"
            )
    # Which decoder blocks get LoRA depends on the depth for some methods (rmu's default layers); a base model of
    # unknown depth is left to the worker, whose run fails naming the parameters that differ.
    if base_model.n_layers is not None:
        layers, parent_layers = ours.adapted_layers(base_model.n_layers), theirs.adapted_layers(base_model.n_layers)
        if layers != parent_layers:
            every = "every block"
            raise InvalidInput(
                f"method.params: LoRA on decoder blocks {layers or every}, the parent adapter's on "
                f"{parent_layers or every}; a stacked request continues its parent's LoRA, so they must be equal"
            )
    return adapter


def _lineage_forget_rows(session: Session, tenant_id: uuid.UUID, parent: Adapter) -> int:
    """The rows of the forget datasets of `parent` and its ancestors, which a stacked job scores as well."""
    rows = 0
    for adapter in [parent, *AdapterRepository(session).ancestors(parent)]:
        job = JobRepository(session).get(tenant_id, adapter.job_id)
        dataset_id = ForgetJobSpec.model_validate(job.spec).forget_dataset if job is not None else None
        dataset = DatasetRepository(session).get(tenant_id, dataset_id) if dataset_id is not None else None
        if dataset is None:
            raise InvalidInput(
                f"parent_adapter: the forget dataset of adapter {adapter.id} (in the parent's lineage) no longer "
                "exists; a stacked job scores every ancestor's forget set"
            )
        rows += dataset.rows
    return rows


def submit_forget_request(session: Session, settings: Settings, tenant_id: uuid.UUID, request: ForgetRequestIn) -> Job:
    """Create the job (status queued) and its first event, within the tenant's limits; the caller enqueues it
    after the commit."""
    base_model = BaseModelRepository(session).get_by_name(request.base_model)
    if base_model is None:
        available = ", ".join(b.name for b in BaseModelRepository(session).list())
        raise InvalidInput(f"base_model: unknown base model {request.base_model!r} (available: {available})")
    forget = _dataset(session, tenant_id, request.forget_dataset, "forget_dataset")
    held_out = heldout_count(forget.rows, request.heldout_fraction)
    if not 1 <= held_out <= forget.rows - 1:
        raise InvalidInput(
            f"heldout_fraction: {request.heldout_fraction} of {forget.rows} rows leaves an empty forget_train "
            "or forget_heldout split"
        )
    retain = [
        _dataset(session, tenant_id, dataset_id, f"retain_datasets[{index}]")
        for index, dataset_id in enumerate(request.retain_datasets)
    ]
    for index, dataset in enumerate(retain):
        if dataset.id == forget.id or dataset.sha256 == forget.sha256:
            same = "is the forget dataset" if dataset.id == forget.id else "has the same content as the forget dataset"
            raise InvalidInput(
                f"retain_datasets[{index}]: dataset {dataset.id} {same}; a retain set must differ from it"
            )
    if len({d.name for d in retain}) != len(retain):
        raise InvalidInput("retain_datasets: two retain datasets share a name; metrics are keyed by name")
    method = MethodChoice(
        name=request.method.name,
        params=_method_params(request.method.name, request.method.params, forget.kind, bool(retain), base_model),
    )
    parent_forget_rows = 0
    if request.parent_adapter is not None:
        parent = _parent_adapter(session, tenant_id, request.parent_adapter, base_model, method)
        parent_forget_rows = _lineage_forget_rows(session, tenant_id, parent)
    spec = ForgetJobSpec(
        base_model=request.base_model,
        base_model_source=base_model.source,
        base_model_weights_sha256=base_model.weights_sha256,
        base_model_revision=base_model.revision,
        forget_dataset=request.forget_dataset,
        retain_datasets=request.retain_datasets,
        heldout_fraction=request.heldout_fraction,
        finetune=FinetuneSpec(**request.finetune.model_dump()) if request.finetune else None,
        method=method,
        probe=request.probe,
        general_text_perplexity=request.general_text_perplexity,
        seed=request.seed,
        audit=validated_audit_spec(request.audit, forget.kind, bool(retain), base_model, prefix="audit.")
        if request.audit
        else None,
        parent_adapter=request.parent_adapter,
    )
    retain_rows = sum(d.rows for d in retain)
    check_cost(settings, "forget request", forget_request_cost(spec, forget.rows, retain_rows, parent_forget_rows))
    check_room_for_job(session, settings, tenant_id)
    return JobRepository(session).create_queued(tenant_id, spec, current_request_id())
