import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
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
from api.schemas import ForgetRequestIn, JobAccepted, JobKind, JobOut, JobPage, JobStatus, SignedReceiptOut
from api.services import deletions, forget_requests, jobs
from api.services.idempotency import CreatingRequest, create_once, json_fingerprint, replayable
from lethe.queue import enqueue_forget_job

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/forget-requests",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses=replayable(status.HTTP_202_ACCEPTED) | job_submission_responses(),
)
def submit_forget_request(
    request: ForgetRequestIn,
    work: UnitOfWorkDep,
    tenant_id: WritingTenantDep,
    queue: QueueDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobAccepted | JSONResponse:
    """Ask for a base model to forget a dataset; returns the job to poll."""

    def submit() -> JobAccepted:
        job = forget_requests.submit_forget_request(work.session, settings, tenant_id, request)
        work.enqueue_after_commit(job.id, lambda: enqueue_forget_job(queue, str(job.id)))
        return JobAccepted(job_id=job.id, status="queued")

    creating = CreatingRequest("submit_forget_request", idempotency_key, json_fingerprint(request))
    return create_once(work, tenant_id, creating, settings.idempotency_ttl_s, status.HTTP_202_ACCEPTED, submit)


@router.get("/jobs", response_model=JobPage, responses=error_responses(401, 422, 429))
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    page: PageDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs with this status.")] = None,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
) -> JobPage:
    """A page of the tenant's jobs, forget and audit alike, newest first; `next_cursor` continues it."""
    return jobs.list_jobs(session, tenant_id, page, status, kind)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=error_responses(401, 404, 410, 422, 429))
def get_job(job_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> JobOut:
    """A job's status, stage, progress, error, adapter and metrics."""
    return jobs.get_job(session, tenant_id, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=error_responses(401, 404, 409, 410, 422, 429))
def cancel_job(job_id: uuid.UUID, work: UnitOfWorkDep, store: StoreDep, tenant_id: WritingTenantDep) -> JobOut:
    """Cancel a queued or running job (409 when it has already finished)."""
    return jobs.cancel_job(work, store, tenant_id, job_id)


@router.delete(
    "/jobs/{job_id}", response_model=SignedReceiptOut, responses=error_responses(401, 404, 409, 410, 422, 429, 503)
)
def delete_job(
    job_id: uuid.UUID, work: UnitOfWorkDep, store: StoreDep, settings: SettingsDep, tenant_id: WritingTenantDep
) -> SignedReceiptOut:
    """Delete a finished job with its events, metrics, evidence and adapter (an audit job: its audit); 409 while it
    is queued or running (cancel it first). Answers the signed receipt."""
    return deletions.delete_job(work, store, settings, tenant_id, job_id)


@router.get(
    "/jobs/{job_id}/per-example",
    response_class=StreamingResponse,
    responses=streamed_object_responses(
        "Per-example metric values: {stage: {split: {metric: [one value per row]}}}.", "application/json"
    ),
)
def get_job_per_example(
    job_id: uuid.UUID, session: SessionDep, store: StoreDep, tenant_id: TenantDep
) -> StreamingResponse:
    """The per-example values behind a succeeded job's aggregate metrics (404 until it has succeeded)."""
    key = jobs.evidence_key(session, tenant_id, job_id)
    return streamed_object(store, key, f"the per-example values of job {job_id}", "application/json")
