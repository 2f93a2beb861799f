"""Reading adapters: one with its lineage, or a page of the tenant's."""

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from api.pagination import page_of
from api.schemas import AdapterOut, AdapterPage, AdapterSummary
from api.services.deletions import missing
from models.repositories import AdapterRepository, PageQuery
from models.tables import Adapter


def get_adapter_row(session: Session, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> Adapter:
    adapter = AdapterRepository(session).get(tenant_id, adapter_id)
    if adapter is None:
        raise missing(session, tenant_id, "adapter", adapter_id)
    return adapter


def get_adapter(session: Session, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> AdapterOut:
    adapter = get_adapter_row(session, tenant_id, adapter_id)
    lineage = [a.id for a in AdapterRepository(session).ancestors(adapter)]
    return AdapterOut(
        id=adapter.id,
        job_id=adapter.job_id,
        base_model=adapter.base_model,
        sha256=adapter.sha256,
        size_bytes=adapter.size_bytes,
        parent_adapter_id=adapter.parent_adapter_id,
        lineage=lineage,
    )


def list_adapters(session: Session, tenant_id: uuid.UUID, page: PageQuery, base_model: str | None) -> AdapterPage:
    """A page of the tenant's adapters, newest first."""
    rows, next_cursor = page_of(AdapterRepository(session).page(tenant_id, page, base_model), page, _sort_key)
    return AdapterPage(
        items=[AdapterSummary.model_validate(a, from_attributes=True) for a in rows], next_cursor=next_cursor
    )


def _sort_key(adapter: Adapter) -> tuple[datetime, uuid.UUID]:
    return adapter.created_at, adapter.id
