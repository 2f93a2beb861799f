"""A job's events: live as Server-Sent Events, or as a JSON page for clients that cannot stream."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.sse import EventSourceResponse

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import error_responses
from api.schemas import JobEventPage
from api.services import job_events

router = APIRouter(prefix="/v1", tags=["jobs"])

_STREAM_DESCRIPTION = (
    "With `Accept: text/event-stream`: the events as Server-Sent Events, each `id: <seq>`, `event: <type>`, "
    "`data: <the event as JSON, as in the JSON page's items>`, with `: ping` comments while the job is quiet; the "
    "stream ends after the job's last event (succeeded, failed or cancelled, and what came with it). Otherwise the "
    "JSON page."
)


@router.get(
    "/jobs/{job_id}/events",
    response_model=JobEventPage,
    responses={
        200: {
            "description": _STREAM_DESCRIPTION,
            "content": {
                job_events.EVENT_STREAM: {
                    "schema": {"type": "string", "description": "A text/event-stream of the job's events."}
                }
            },
        },
        **error_responses(401, 404, 422, 429),
    },
)
def get_job_events(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    after: Annotated[
        int, Query(ge=0, description="Only events with a larger seq (the last seq you have; 0 = from the start).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many events (the JSON page only).")] = 50,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            description="The stream resumes after this seq (an EventSource sends it when it reconnects); it takes "
            "precedence over `after`.",
        ),
    ] = None,
) -> JobEventPage | EventSourceResponse:
    """A job's events in order: queued, running, stage, progress (stage, fraction, latest curve point), requeued,
    audit_requested, and its end (succeeded, failed, cancelled)."""
    # Accept is read here rather than declared: as a parameter it would be a field every generated client must fill.
    if not job_events.wants_event_stream(request.headers.get("accept", "")):
        return job_events.events_page(session, tenant_id, job_id, after, limit)
    job_events.check_job(session, tenant_id, job_id)
    start = last_event_id if last_event_id is not None else after
    stream = job_events.event_stream(settings, request.app.state.event_streams, tenant_id, job_id, start)
    # no-cache: nothing between keeps a copy; X-Accel-Buffering: nginx passes each event on as it comes.
    return EventSourceResponse(stream, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
