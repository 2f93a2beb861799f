"""API keys, the installation's admin API (the `admin` scope): list, create, revoke, rotate."""

import dataclasses
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status

from api.deps import AdminDep, SessionDep
from api.errors import error_responses
from api.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut, ApiKeyPage, ApiKeyRotateIn
from api.services import api_keys
from api.services.api_keys import ApiKeyView, IssuedKey

router = APIRouter(prefix="/v1", tags=["api-keys"])


def _out(view: ApiKeyView) -> ApiKeyOut:
    return ApiKeyOut.model_validate(dataclasses.asdict(view))


def _created(issued: IssuedKey) -> ApiKeyCreated:
    return ApiKeyCreated.model_validate({**dataclasses.asdict(issued.view), "key": issued.key})


@router.get("/api-keys", response_model=ApiKeyPage, responses=error_responses(401, 422, 429))
def list_api_keys(
    session: SessionDep,
    _admin: AdminDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    tenant: Annotated[str | None, Query(max_length=100, description="Only this tenant's keys (by name).")] = None,
    key_status: Annotated[
        Literal["active", "revoked", "expired"] | None, Query(alias="status", description="Only keys in this state.")
    ] = None,
) -> ApiKeyPage:
    """Every tenant's keys, newest first, a page at a time: prefixes, scopes and use, never a key or its hash."""
    page = api_keys.list_keys(session, limit, cursor, tenant, key_status)
    return ApiKeyPage(items=[_out(view) for view in page.items], next_cursor=page.next_cursor)


@router.post(
    "/api-keys",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400, 401, 413, 415, 422, 429),
)
def create_api_key(body: ApiKeyIn, session: SessionDep, _admin: AdminDep) -> ApiKeyCreated:
    """Make a key for a tenant (made if new) with the scopes given; the response shows the key, this once."""
    return _created(api_keys.create(session, body.tenant, body.scopes, body.name, body.expires_at))


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKeyOut, responses=error_responses(401, 404, 422, 429))
def revoke_api_key(key_id: uuid.UUID, session: SessionDep, _admin: AdminDep) -> ApiKeyOut:
    """Revoke a key now: its next request is a 401. Revoking a revoked key changes nothing."""
    return _out(api_keys.revoke(session, key_id))


@router.post(
    "/api-keys/{key_id}/rotate",
    response_model=ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 429),
)
def rotate_api_key(key_id: uuid.UUID, body: ApiKeyRotateIn, session: SessionDep, _admin: AdminDep) -> ApiKeyCreated:
    """Replace a key by a new one with its tenant, scopes and name (shown this once); the old key is revoked now, or
    keeps working for `grace_s` seconds. 409 if the old key is revoked, expired or rotated already."""
    return _created(api_keys.rotate(session, key_id, body.grace_s))
