"""The registries a request names its choices from: base models, methods, metrics and attacks."""

from fastapi import APIRouter

from api.deps import SessionDep, TenantDep
from api.errors import error_responses
from api.schemas import AttackOut, BaseModelOut, MethodOut, MetricSpecOut
from api.services.base_models import list_base_models as list_registered
from lethe.attacks import ATTACKS
from lethe.methods import METHODS
from lethe.metrics import METRICS

# The OpenAPI tag is the published spec's (SDKs name their classes after it): renaming it is an API change.
router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/base-models", response_model=list[BaseModelOut], responses=error_responses(401, 429))
def list_base_models(session: SessionDep, _tenant_id: TenantDep) -> list[BaseModelOut]:
    """Base models a forget request can name."""
    return [BaseModelOut.model_validate(b, from_attributes=True) for b in list_registered(session)]


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
