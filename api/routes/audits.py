"""Recovery-attack audits of adapters: submit, read, and fetch the signed report."""

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import (
    IdempotencyKeyDep,
    QueueDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    TenantDep,
    UnitOfWorkDep,
    WritingTenantDep,
)
from api.errors import error_responses, job_submission_responses
from api.pagination import PageDep
from api.routes.streaming import streamed_object, streamed_object_responses
from api.schemas import AuditAccepted, AuditOut, AuditPage, AuditRequestIn, JobStatus, SignedReceiptOut, Verdict
from api.services import audits, deletions
from api.services.idempotency import CreatingRequest, create_once, json_fingerprint, replayable
from lethe.queue import enqueue_audit_job

router = APIRouter(prefix="/v1/audits", tags=["audits"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AuditAccepted,
    responses=replayable(status.HTTP_202_ACCEPTED) | job_submission_responses(),
)
def submit_audit(
    request: AuditRequestIn,
    work: UnitOfWorkDep,
    tenant_id: WritingTenantDep,
    queue: QueueDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> AuditAccepted | JSONResponse:
    """Run recovery attacks on an adapter; returns the audit and the job to poll."""

    def submit() -> AuditAccepted:
        audit = audits.submit_audit(work.session, settings, tenant_id, request)
        work.enqueue_after_commit(audit.job_id, lambda: enqueue_audit_job(queue, str(audit.job_id)))
        return AuditAccepted(audit_id=audit.id, job_id=audit.job_id, status="queued")

    creating = CreatingRequest("submit_audit", idempotency_key, json_fingerprint(request))
    return create_once(work, tenant_id, creating, settings.idempotency_ttl_s, status.HTTP_202_ACCEPTED, submit)


@router.get("", response_model=AuditPage, responses=error_responses(401, 422, 429))
def list_audits(
    session: SessionDep,
    tenant_id: TenantDep,
    page: PageDep,
    status: Annotated[JobStatus | None, Query(description="Only audits whose job has this status.")] = None,
    verdict: Annotated[Verdict | None, Query(description="Only succeeded audits with this verdict.")] = None,
    adapter_id: Annotated[uuid.UUID | None, Query(description="Only audits of this adapter.")] = None,
) -> AuditPage:
    """A page of the tenant's audits, newest first; `next_cursor` continues it."""
    return audits.list_audits(session, tenant_id, page, status, verdict, adapter_id)


@router.get("/{audit_id}", response_model=AuditOut, responses=error_responses(401, 404, 410, 422, 429))
def get_audit(audit_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> AuditOut:
    """An audit's status and, once it has succeeded, every attack's before / after forgetting / after attack,
    recovery rate and verdict, and the overall verdict."""
    return audits.get_audit(session, tenant_id, audit_id)


@router.delete(
    "/{audit_id}", response_model=SignedReceiptOut, responses=error_responses(401, 404, 409, 410, 422, 429, 503)
)
def delete_audit(
    audit_id: uuid.UUID, work: UnitOfWorkDep, store: StoreDep, settings: SettingsDep, tenant_id: WritingTenantDep
) -> SignedReceiptOut:
    """Delete an audit: its results, diagnostics, reports and its job (409 while its job is queued or running).
    Answers the signed receipt."""
    return deletions.delete_audit(work, store, settings, tenant_id, audit_id)


@router.get(
    "/{audit_id}/report",
    response_class=StreamingResponse,
    responses=streamed_object_responses(
        "The signed report: JSON {report, signature}, or the HTML page with plots.", "application/json", "text/html"
    ),
)
def get_audit_report(
    audit_id: uuid.UUID,
    session: SessionDep,
    store: StoreDep,
    tenant_id: TenantDep,
    format: Annotated[
        Literal["json", "html"] | None, Query(description="json or html; default: html if Accept asks for it")
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """The audit's signed report (check it with `lethe verify-report FILE`), as JSON or as an HTML page."""
    fmt = format or ("html" if accept and "text/html" in accept else "json")
    key = audits.report_key(session, tenant_id, audit_id, fmt)
    media_type = "text/html; charset=utf-8" if fmt == "html" else "application/json"
    filename = f"lethe-audit-{audit_id}.{fmt}"
    return streamed_object(
        store,
        key,
        f"the {fmt} report of audit {audit_id}",
        media_type,
        {"Content-Disposition": f'inline; filename="{filename}"'},
    )
