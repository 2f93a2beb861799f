"""FastAPI dependencies as Annotated aliases: settings, the request's transaction, tenant, store, queue."""

import uuid
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from api.services.auth import authenticate
from lethe.settings import Settings
from models.db import get_sessionmaker
from storage import ObjectStore


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back when it raises."""
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Your tenant's API key.")


def get_tenant_id(session: SessionDep, api_key: Annotated[str | None, Security(_api_key_header)]) -> uuid.UUID:
    return authenticate(session, api_key)


TenantDep = Annotated[uuid.UUID, Depends(get_tenant_id)]


def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


StoreDep = Annotated[ObjectStore, Depends(get_store)]


def get_queue(request: Request) -> Celery:
    queue: Celery = request.app.state.queue
    return queue


QueueDep = Annotated[Celery, Depends(get_queue)]
