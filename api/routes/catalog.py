"""What a forget request can name: base models and methods."""

from fastapi import APIRouter

from api.deps import SessionDep, TenantDep
from api.errors import error_responses
from api.schemas import BaseModelOut, MethodOut
from api.services.base_models import list_base_models as list_registered
from worker.engine.methods.params import METHODS

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/base-models", response_model=list[BaseModelOut], responses=error_responses(401))
def list_base_models(session: SessionDep, _tenant_id: TenantDep) -> list[BaseModelOut]:
    """Base models a forget request can name."""
    return [BaseModelOut.model_validate(b, from_attributes=True) for b in list_registered(session)]


@router.get("/methods", response_model=list[MethodOut], responses=error_responses(401))
def list_methods(_tenant_id: TenantDep) -> list[MethodOut]:
    """Unlearning methods with the JSON schema (and defaults) of their params."""
    return [
        MethodOut(name=name, description=spec.description, params=spec.json_schema()) for name, spec in METHODS.items()
    ]
