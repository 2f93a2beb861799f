"""Deletion receipts, and a tenant's evidence retention (admin)."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import AdminDep, SessionDep, TenantDep
from api.errors import ErrorBody, error_responses
from api.pagination import PageDep
from api.schemas import DeletedResource, DeletionPage, DeletionReason, RetentionIn, RetentionOut, SignedReceiptOut
from api.services import deletions, retention

router = APIRouter(prefix="/v1", tags=["deletions"])


@router.get("/deletions", response_model=DeletionPage, responses=error_responses(401, 422, 429))
def list_deletions(
    session: SessionDep,
    tenant_id: TenantDep,
    page: PageDep,
    resource: Annotated[DeletedResource | None, Query(description="Only deletions of this kind of resource.")] = None,
    reason: Annotated[
        DeletionReason | None, Query(description="Only deletions a request made, or only the retention pass's.")
    ] = None,
) -> DeletionPage:
    """A page of the tenant's signed deletion receipts, newest first (`created_after` and `created_before` bound
    when they were deleted)."""
    return deletions.list_deletions(session, tenant_id, page, resource, reason)


@router.get("/deletions/{deletion_id}", response_model=SignedReceiptOut, responses=error_responses(401, 404, 422, 429))
def get_deletion(deletion_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> SignedReceiptOut:
    """One signed deletion receipt, as the DELETE (or the retention pass) made it."""
    return deletions.get_deletion(session, tenant_id, deletion_id)


def _admin_responses() -> dict[int | str, dict[str, Any]]:
    responses = error_responses(400, 401, 404, 413, 415, 422, 429, 503)
    responses[401] = {**responses[401], "description": "No X-API-Key: this operation needs the admin key."}
    responses[403] = {
        "model": ErrorBody,
        "description": "forbidden: the key is not LETHE_ADMIN_API_KEY, or no admin key is configured.",
    }
    responses[404] = {**responses[404], "description": "No tenant of this name."}
    return responses


@router.put("/tenants/{tenant}/retention", response_model=RetentionOut, responses=_admin_responses())
def set_tenant_retention(tenant: str, body: RetentionIn, session: SessionDep, _admin: AdminDep) -> RetentionOut:
    """Keep a tenant's job evidence (per-example values, pre-forgetting state) this many days after the job
    finished, or forever (null); admin key only. The API's maintenance pass deletes older evidence, each job's with a
    signed receipt of reason `retention` (GET /v1/deletions)."""
    return retention.set_retention(session, tenant, body.evidence_retention_days)
