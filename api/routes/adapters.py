import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import SessionDep, StoreDep, TenantDep
from api.errors import NotFound, error_responses
from api.routes.streaming import BINARY, streamed_object, streamed_object_responses
from api.schemas import AdapterOut
from models.repositories import AdapterRepository
from models.tables import Adapter

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


def _adapter(session: SessionDep, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> Adapter:
    adapter = AdapterRepository(session).get(tenant_id, adapter_id)
    if adapter is None:
        raise NotFound(f"adapter {adapter_id} not found")
    return adapter


@router.get("/{adapter_id}", response_model=AdapterOut, responses=error_responses(401, 404, 422, 429))
def get_adapter(adapter_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> AdapterOut:
    """An adapter's provenance, checksum and lineage."""
    adapter = _adapter(session, tenant_id, adapter_id)
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


@router.get(
    "/{adapter_id}/download",
    response_class=StreamingResponse,
    responses=streamed_object_responses(
        "A tar.gz of the PEFT adapter directory.",
        {"application/gzip": BINARY},
        headers={
            "X-Checksum-SHA256": {
                "description": "sha256 (hex) of the archive: the adapter's `sha256`.",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
            "Content-Disposition": {
                "description": "attachment, with the archive's file name.",
                "required": True,
                "schema": {"type": "string"},
            },
        },
    ),
)
def download_adapter(
    adapter_id: uuid.UUID, session: SessionDep, store: StoreDep, tenant_id: TenantDep
) -> StreamingResponse:
    """The adapter as a tar.gz: adapter_config.json, adapter_model.safetensors, README.md model card."""
    adapter = _adapter(session, tenant_id, adapter_id)
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
