"""Recovery-attack audits of adapters: submit, read, and fetch the signed report."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session

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
from api.errors import InvalidInput, error_responses, job_submission_responses
from api.pagination import PageDep
from api.routes.created import located, located_responses
from api.routes.streaming import TEXT, streamed_object, streamed_object_responses
from api.schemas import (
    AuditAccepted,
    AuditOut,
    AuditPage,
    AuditRequestIn,
    JobStatus,
    SignedReceiptOut,
    SignedReport,
    Verdict,
)
from api.services import audits, deletions
from api.services.idempotency import CreatingRequest, create_once, json_fingerprint
from lethe.queue import enqueue_audit_job
from storage import ObjectStore

router = APIRouter(prefix="/v1/audits", tags=["audits"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AuditAccepted,
    responses=located_responses(status.HTTP_202_ACCEPTED, "the audit to poll") | job_submission_responses(),
)
def submit_audit(
    request: AuditRequestIn,
    work: UnitOfWorkDep,
    tenant_id: WritingTenantDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKeyDep = None,
) -> AuditAccepted | JSONResponse:
    """Run recovery attacks on an adapter; returns the audit and the job to poll."""

    def submit() -> AuditAccepted:
        audit = audits.submit_audit(work.session, settings, tenant_id, request)
        work.enqueue_after_commit(audit.job_id, lambda: enqueue_audit_job(queue, str(audit.job_id)))
        return AuditAccepted(audit_id=audit.id, job_id=audit.job_id, status="queued")

    creating = CreatingRequest("submit_audit", idempotency_key, json_fingerprint(request))
    accepted = create_once(work, tenant_id, creating, settings.idempotency_ttl_s, status.HTTP_202_ACCEPTED, submit)
    return located(accepted, response, lambda body: f"/v1/audits/{body['audit_id']}")


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


# The HTML report is a self-contained page (inline CSS, PNG plots as data: URIs, no script, no URL): its policy allows
# exactly that. Inline styles need 'unsafe-inline' (a stored page has no nonce), harmless with every script refused;
# `sandbox` gives it an opaque origin, so even a page that slipped past the template's escaping reaches nothing.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'; sandbox"
)
_REPORT_HEADERS: dict[str, dict[str, Any]] = {
    "Content-Security-Policy": {
        "description": "On the HTML page: nothing but its inline CSS and data: images loads, no script runs.",
        "schema": {"type": "string"},
    },
    "X-Content-Type-Options": {"description": "`nosniff`.", "required": True, "schema": {"type": "string"}},
}
_FORMATS = ("json", "html")


def _report(store: ObjectStore, session: Session, tenant_id: uuid.UUID, audit_id: uuid.UUID, fmt: str) -> Response:
    key = audits.report_key(session, tenant_id, audit_id, fmt)
    headers = {"Content-Disposition": f'inline; filename="lethe-audit-{audit_id}.{fmt}"'}
    if fmt == "html":
        headers["Content-Security-Policy"] = REPORT_CSP
    media_type = "text/html; charset=utf-8" if fmt == "html" else "application/json"
    return streamed_object(store, key, f"the {fmt} report of audit {audit_id}", media_type, headers)


@router.get(
    "/{audit_id}/report",
    response_class=StreamingResponse,
    responses=streamed_object_responses(
        "The signed report as JSON {report, signature}; the HTML page with plots for `?format=html` or an Accept "
        "that asks for text/html.",
        {"application/json": {}, "text/html": TEXT},
        model=SignedReport,
        headers=_REPORT_HEADERS,
    ),
)
def get_audit_report(
    audit_id: uuid.UUID, request: Request, session: SessionDep, store: StoreDep, tenant_id: TenantDep
) -> Response:
    """The audit's signed report (check it with `lethe verify-report FILE`): JSON, or the HTML page for a browser
    (`?format=html`, or an Accept asking for text/html). An SDK reads the page from GET .../report.html."""
    # `format` and Accept are read here rather than declared: a declared choice of body would give a generated SDK
    # one function with two return types, which generators cannot parse; each body has its own operation instead.
    fmt = request.query_params.get("format")
    if fmt is None:
        fmt = "html" if "text/html" in request.headers.get("accept", "") else "json"
    elif fmt not in _FORMATS:
        raise InvalidInput(f"format: must be json or html, got {fmt!r}")
    return _report(store, session, tenant_id, audit_id, fmt)


@router.get(
    "/{audit_id}/report.html",
    response_class=StreamingResponse,
    responses=streamed_object_responses(
        "The signed report's HTML page, with plots.", {"text/html": TEXT}, headers=_REPORT_HEADERS
    ),
)
def get_audit_report_html(audit_id: uuid.UUID, session: SessionDep, store: StoreDep, tenant_id: TenantDep) -> Response:
    """The audit's report as a self-contained HTML page (what GET .../report?format=html answers)."""
    return _report(store, session, tenant_id, audit_id, "html")
