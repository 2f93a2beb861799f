"""The registries a request names its choices from: base models, methods, metrics and attacks."""

from typing import Any

from fastapi import APIRouter, status

from api.deps import AdminDep, SessionDep, SettingsDep, TenantDep
from api.errors import InvalidInput, ServiceUnavailable, error_responses
from api.schemas import AttackOut, BaseModelIn, BaseModelOut, MethodOut, MetricSpecOut
from api.services.base_models import add_base_model
from api.services.base_models import list_base_models as list_registered
from lethe.attacks import ATTACKS
from lethe.base_model_sources import BaseModelSourceError, HubUnreachable
from lethe.hub import HubOptions
from lethe.methods import METHODS
from lethe.metrics import METRICS

# The OpenAPI tag is the published spec's (SDKs name their classes after it): renaming it is an API change.
router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/base-models", response_model=list[BaseModelOut], responses=error_responses(401, 429))
def list_base_models(session: SessionDep, _tenant_id: TenantDep) -> list[BaseModelOut]:
    """Base models a forget request can name."""
    return [BaseModelOut.model_validate(b, from_attributes=True) for b in list_registered(session)]


def _admin_responses() -> dict[int | str, dict[str, Any]]:
    responses = error_responses(400, 401, 413, 415, 422, 429, 503)
    # The 403 of a key without the admin scope is declared with the scope (api/scopes.py).
    responses[401] = {**responses[401], "description": "Missing or unknown X-API-Key: this needs a key with `admin`."}
    responses[422] = {
        **responses[422],
        "description": "The source cannot be used; `detail` names why (unknown scheme, repository or revision not "
        "on the hub with its answer, no safetensors weights, custom code, not a directory, a bundled name).",
    }
    responses[503] = {**responses[503], "description": "The hub did not answer; nothing was registered."}
    return responses


@router.post(
    "/base-models",
    response_model=BaseModelOut,
    status_code=status.HTTP_201_CREATED,
    responses=_admin_responses(),
)
def register_base_model(
    body: BaseModelIn, session: SessionDep, settings: SettingsDep, _admin: AdminDep
) -> BaseModelOut:
    """Register a base model (or re-point a name to another source); a key with the admin scope only. A hub source
    is resolved here: its revision pinned to the commit, its safetensors weights' sha256 taken from the hub's file
    metadata (the weights are downloaded by a worker on first use, which checks that digest)."""
    # A plain `def`: the hub's round trips block, and run in the threadpool (each bounded by LETHE_HF_TIMEOUT_S).
    try:
        base_model = add_base_model(
            session, HubOptions.from_settings(settings), body.name, body.source, body.description
        )
    except HubUnreachable as exc:
        raise ServiceUnavailable(str(exc), retry_after_s=30) from exc
    except BaseModelSourceError as exc:
        message = str(exc)
        raise InvalidInput(message if message.startswith(("source", "name")) else f"source: {message}") from exc
    return BaseModelOut.model_validate(base_model, from_attributes=True)


@router.get("/methods", response_model=list[MethodOut], responses=error_responses(401, 429))
def list_methods(_tenant_id: TenantDep) -> list[MethodOut]:
    """Unlearning methods with the JSON schema (and defaults) of their params."""
    return [
        MethodOut(
            name=name,
            description=spec.description,
            kinds=list(spec.kinds),
            params=spec.json_schema(),
            experimental=spec.experimental,
            reconstructed=spec.reconstructed,
        )
        for name, spec in METHODS.items()
    ]


@router.get("/metrics", response_model=list[MetricSpecOut], responses=error_responses(401, 429))
def list_metrics(_tenant_id: TenantDep) -> list[MetricSpecOut]:
    """Metrics a job reports: their definitions, the dataset kinds they apply to and which way is forgetting."""
    return [MetricSpecOut.model_validate(spec, from_attributes=True) for _name, spec in METRICS.items()]


@router.get("/attacks", response_model=list[AttackOut], responses=error_responses(401, 429))
def list_attacks(_tenant_id: TenantDep) -> list[AttackOut]:
    """Recovery attacks and diagnostics an audit can run, with the JSON schema (and defaults) of their params and how
    an attack's results are judged: 95% paired-bootstrap intervals over rows (Bonferroni over an attack's variants),
    shallow only when an interval lies above the threshold, robust only when below, otherwise inconclusive with a
    reason. Diagnostics are never judged."""
    return [
        AttackOut(
            name=name,
            description=spec.description,
            kinds=list(spec.kinds),
            needs_retain=spec.needs_retain,
            diagnostic=spec.diagnostic,
            controlled=spec.controlled,
            verdict_rule=spec.verdict_rule(),
            params=spec.json_schema(),
        )
        for name, spec in ATTACKS.items()
    ]
