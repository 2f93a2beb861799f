"""FastAPI dependencies as Annotated aliases: settings, the request's unit of work, tenant, store, queue."""

import uuid
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from api.errors import ServiceUnavailable
from api.rate_limit import RateLimiter
from api.services.auth import AuthenticatedKey
from lethe.settings import Settings
from models.db import BrokerUnavailable, UnitOfWork, unit_of_work
from storage import ObjectStore


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_unit_of_work(settings: SettingsDep) -> Iterator[UnitOfWork]:
    """One transaction per request, and routes never commit: this boundary does.

    It commits when the route function returns, before the response is sent (`scope="function"`), so a 2xx always
    means the rows are there (and so is anything a route registered to undo otherwise), and it rolls back when the
    route raises. Jobs the route registered with `enqueue_after_commit` are sent right after that commit; one the
    broker refuses is already failed (broker_unavailable) when this answers 503.
    """
    try:
        with unit_of_work(settings.database_url) as work:
            yield work
    except BrokerUnavailable as exc:
        raise ServiceUnavailable(exc.reason) from exc


UnitOfWorkDep = Annotated[UnitOfWork, Depends(get_unit_of_work, scope="function")]


def get_session(work: UnitOfWorkDep) -> Session:
    """The request's session (for routes that only read and write rows)."""
    return work.session


SessionDep = Annotated[Session, Depends(get_session)]

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key (`lethe api-keys create`, or `POST /v1/api-keys`). Each operation's security requirement "
    "names the scope the key needs: `read` (a tenant's GET operations), `submit` (a tenant's POST and DELETE "
    "operations) or `admin` (the installation's operations); a key without it gets 403.",
)


def get_tenant_id(request: Request, _api_key: Annotated[str | None, Security(_api_key_header)]) -> uuid.UUID:
    """The tenant whose key the request gate checked (`api/gate.py`: it authenticates every route that depends on
    this, and checks the key's scope for the method (api/scopes.py), before the body is read). The header parameter
    is what puts the key into the spec."""
    tenant_id: uuid.UUID | None = getattr(request.state, "tenant_id", None)
    assert tenant_id is not None, "the request gate authenticates every route that depends on get_tenant_id"
    return tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant_id)]


def require_admin(
    request: Request, _api_key: Annotated[str | None, Security(_api_key_header, scopes=["admin"])]
) -> None:
    """Admits a request whose key the gate found to hold the `admin` scope (`api/gate.py`); the header parameter
    puts the scope into the spec, where the gate reads it."""
    api_key: AuthenticatedKey | None = getattr(request.state, "api_key", None)
    assert api_key is not None and "admin" in api_key.scopes, "the request gate checks every admin operation's scope"


AdminDep = Annotated[None, Depends(require_admin)]


def get_writing_tenant_id(request: Request, tenant_id: TenantDep) -> uuid.UUID:
    """The tenant of a request that writes, within its request rate (api/rate_limit.py); 429 otherwise."""
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.take(tenant_id)
    return tenant_id


WritingTenantDep = Annotated[uuid.UUID, Depends(get_writing_tenant_id)]


def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


StoreDep = Annotated[ObjectStore, Depends(get_store)]


def get_queue(request: Request) -> Celery:
    queue: Celery = request.app.state.queue
    return queue


QueueDep = Annotated[Celery, Depends(get_queue)]


# 1 to 200 visible ASCII characters (no spaces): a UUID or a random string.
IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description=(
            "Makes the request safe to retry: a retry with the same key and the same request gets the first "
            "response again (with `Idempotent-Replayed: true`) and creates nothing; the same key with a different "
            "request is a 409. Keys are scoped to your tenant and this operation, and expire after "
            "LETHE_IDEMPOTENCY_TTL_S (24 h by default). At most 200 visible ASCII characters."
        ),
    ),
]
