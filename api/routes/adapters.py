import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import SessionDep, SettingsDep, StoreDep, TenantDep, UnitOfWorkDep, WritingTenantDep
from api.errors import error_responses
from api.pagination import PageDep
from api.routes.streaming import streamed_object, streamed_object_responses
from api.schemas import AdapterOut, AdapterPage, SignedReceiptOut
from api.services import adapters, deletions

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("", response_model=AdapterPage, responses=error_responses(401, 422, 429))
def list_adapters(
    session: SessionDep,
    tenant_id: TenantDep,
    page: PageDep,
    base_model: Annotated[str | None, Query(max_length=100, description="Only adapters on this base model.")] = None,
) -> AdapterPage:
    """A page of the tenant's adapters, newest first; `next_cursor` continues it."""
    return adapters.list_adapters(session, tenant_id, page, base_model)


@router.get("/{adapter_id}", response_model=AdapterOut, responses=error_responses(401, 404, 410, 422, 429))
def get_adapter(adapter_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> AdapterOut:
    """An adapter's provenance, checksum and lineage."""
    return adapters.get_adapter(session, tenant_id, adapter_id)


@router.delete(
    "/{adapter_id}", response_model=SignedReceiptOut, responses=error_responses(401, 404, 409, 410, 422, 429, 503)
)
def delete_adapter(
    adapter_id: uuid.UUID, work: UnitOfWorkDep, store: StoreDep, settings: SettingsDep, tenant_id: WritingTenantDep
) -> SignedReceiptOut:
    """Delete an adapter: its archive and its audits (409 while adapters are stacked on it or it is being audited);
    the job that made it stays. Answers the signed receipt."""
    return deletions.delete_adapter(work, store, settings, tenant_id, adapter_id)


@router.get(
    "/{adapter_id}/download",
    response_class=StreamingResponse,
    responses=streamed_object_responses("A tar.gz of the PEFT adapter directory.", "application/gzip"),
)
def download_adapter(
    adapter_id: uuid.UUID, session: SessionDep, store: StoreDep, tenant_id: TenantDep
) -> StreamingResponse:
    """The adapter as a tar.gz: adapter_config.json, adapter_model.safetensors, README.md model card."""
    adapter = adapters.get_adapter_row(session, tenant_id, adapter_id)
    return streamed_object(
        store,
        adapter.object_key,
        f"the archive of adapter {adapter.id}",
        "application/gzip",
        {
            "Content-Disposition": f'attachment; filename="lethe-adapter-{adapter.id}.tar.gz"',
            "X-Checksum-SHA256": adapter.sha256,
        },
    )
