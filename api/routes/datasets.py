import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.responses import JSONResponse

from api.deps import IdempotencyKeyDep, SessionDep, SettingsDep, StoreDep, TenantDep, UnitOfWorkDep, WritingTenantDep
from api.errors import PayloadTooLarge, error_responses
from api.pagination import PageDep
from api.schemas import DatasetKind, DatasetOut, DatasetPage, SignedReceiptOut
from api.services import datasets as service
from api.services import deletions
from api.services.idempotency import CreatingRequest, create_once, replayable, upload_fingerprint

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _read_bounded(file: UploadFile, limit: int) -> bytes:
    """The uploaded file, refused over `limit` (the request gate, api/gate.py, already refused a body over the
    limit plus the multipart envelope before it was read)."""
    # The form is already parsed (asynchronously, before the route runs) into a spooled file: read it here.
    content = file.file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLarge(f"file: upload is larger than the limit of {limit} bytes")
    return content


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses=replayable(status.HTTP_201_CREATED) | error_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
)
def upload_dataset(
    work: UnitOfWorkDep,
    store: StoreDep,
    tenant_id: WritingTenantDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="JSONL, one row per line.")],
    name: Annotated[str, Form(description="A name for the dataset (retain metrics are keyed by it).")],
    kind: Annotated[str, Form(description="Row schema of the file: `choice`, `qa` or `text`.")],
    idempotency_key: IdempotencyKeyDep = None,
) -> DatasetOut | JSONResponse:
    """Upload a JSONL dataset; every row is validated and a bad file stores nothing."""
    # A plain `def`, so FastAPI runs it in its threadpool: the catalogue and the object store block, and on the
    # event loop one waiting for a database lock would stall every other request (even /healthz).
    content = _read_bounded(file, settings.max_upload_bytes)

    def create() -> DatasetOut:
        dataset = service.create_dataset(work, store, settings, tenant_id, name, kind, content)
        return DatasetOut.model_validate(dataset, from_attributes=True)

    creating = CreatingRequest("upload_dataset", idempotency_key, upload_fingerprint(content, name, kind))
    return create_once(work, tenant_id, creating, settings.idempotency_ttl_s, status.HTTP_201_CREATED, create)


@router.get("", response_model=DatasetPage, responses=error_responses(401, 422, 429))
def list_datasets(
    session: SessionDep,
    tenant_id: TenantDep,
    page: PageDep,
    kind: Annotated[DatasetKind | None, Query(description="Only datasets of this kind.")] = None,
) -> DatasetPage:
    """A page of the tenant's datasets, newest first; `next_cursor` continues it."""
    return service.list_datasets(session, tenant_id, page, kind)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(401, 404, 410, 422, 429))
def get_dataset(dataset_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> DatasetOut:
    """One dataset of the tenant."""
    return DatasetOut.model_validate(service.get_dataset(session, tenant_id, dataset_id), from_attributes=True)


@router.delete(
    "/{dataset_id}", response_model=SignedReceiptOut, responses=error_responses(401, 404, 409, 410, 422, 429, 503)
)
def delete_dataset(
    dataset_id: uuid.UUID, work: UnitOfWorkDep, store: StoreDep, settings: SettingsDep, tenant_id: WritingTenantDep
) -> SignedReceiptOut:
    """Delete a dataset: its row and its file (409 while a queued or running job reads it); answers the signed
    receipt."""
    return deletions.delete_dataset(work, store, settings, tenant_id, dataset_id)
