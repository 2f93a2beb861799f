"""A job's events for its reader: a JSON page, or a Server-Sent Events stream that follows the job to its end.

The stream is a loop of short reads: every `events_poll_interval_s` it opens a session, reads the events after the
last one sent and the job's status, and closes it again, in a thread so that the event loop serves other requests
meanwhile. No session is held while the stream waits (a job runs for hours; a pool of connections would be gone
after a few watchers). When the client leaves, Starlette's StreamingResponse cancels the loop at its next await
(uvicorn speaks ASGI 2.3, under which it listens for `http.disconnect` beside the stream).

Why not FastAPI's own SSE (`fastapi.sse`, new in 0.13x and present in 0.165): it streams when the route function is
itself a generator declared with `response_class=EventSourceResponse`, so that operation always streams and cannot
answer the JSON page to a client that did not ask for a stream; and its keep-alive interval is a module global
(`fastapi.sse._PING_INTERVAL`). sse-starlette would be a dependency for what is left: a keep-alive and a disconnect
check, both a few lines here. So this module uses FastAPI's wire format (`format_sse_event`, its keep-alive comment)
and response class, and its own loop.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from sqlalchemy.orm import Session

from api.errors import NotFound
from api.schemas import TERMINAL_EVENT_TYPES, JobEventOut, JobEventPage
from lethe.settings import Settings
from models.db import session_scope, unavailable
from models.repositories import JobEventRepository, JobRepository
from models.tables import JobEvent

log = logging.getLogger("lethe.api")

EVENT_STREAM = "text/event-stream"
# Events read per poll of a stream; a job with more waiting is read again at once, without the poll's pause.
STREAM_PAGE_SIZE = 200
# Rows written before the event names followed the API's: a claim wrote `started`, a failure {code, message}.
_LEGACY_TYPES = {"started": "running"}


def event_out(event: JobEvent) -> JobEventOut:
    """The event as the API shows it (older rows' names translated)."""
    type_ = _LEGACY_TYPES.get(event.type, event.type)
    data = dict(event.payload)
    if type_ == "failed" and "code" in data:
        data = {"error_code": data["code"], "error_message": data.get("message", "")}
    return JobEventOut(seq=event.seq, type=type_, created_at=event.created_at, data=data)  # type: ignore[arg-type]


def events_page(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, after: int, limit: int) -> JobEventPage:
    """Up to `limit` of the tenant's job's events after seq `after`; NotFound for another tenant's job.

    `terminal` needs the job closed and no event left after this page. The status is read before the events: the
    event that closes a job is committed with its status (and anything after it, `audit_requested`, in the same
    transaction; no write follows a close), so once the status says closed, the events read next are all there are.
    """
    job = JobRepository(session).get(tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    ended = job.status in TERMINAL_EVENT_TYPES
    rows = JobEventRepository(session).after(job.id, after, limit + 1)
    items = [event_out(row) for row in rows[:limit]]
    return JobEventPage(
        items=items, next_after=items[-1].seq if items else after, terminal=ended and len(rows) <= limit
    )


def check_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """NotFound unless the job is the tenant's: checked before a stream's 200 goes out."""
    if JobRepository(session).get(tenant_id, job_id) is None:
        raise NotFound(f"job {job_id} not found")


def wants_event_stream(accept: str) -> bool:
    """Whether an Accept header asks for the stream: it names text/event-stream (q > 0), at least as high as
    application/json. `*/*`, no Accept, or JSON preferred: the JSON page."""
    quality: dict[str, float] = {}
    for media_range in accept.split(","):
        media_type, *params = (part.strip() for part in media_range.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media_type.lower()] = max(q, quality.get(media_type.lower(), 0.0))
    stream = quality.get(EVENT_STREAM, 0.0)
    return stream > 0 and stream >= quality.get("application/json", 0.0)


@dataclass
class EventStreams:
    """The event streams this API process is serving now (operators and tests read it: a stream whose client left
    is gone from it)."""

    open: int = 0


def _read(settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID, after: int) -> JobEventPage:
    with session_scope(settings.database_url) as session:
        return events_page(session, tenant_id, job_id, after, STREAM_PAGE_SIZE)


async def event_stream(
    settings: Settings, streams: EventStreams, tenant_id: uuid.UUID, job_id: uuid.UUID, after: int
) -> AsyncIterator[bytes]:
    """The job's events after seq `after` as SSE (`id: seq`, `event: type`, `data: the event as JSON`), until the job
    has ended and its last event is sent; a `: ping` comment after `events_keepalive_s` without one.

    A busy or unreachable catalogue does not end the stream: it is read again at the next poll (the keep-alives go
    on meanwhile). A job deleted while it is watched ends it.
    """
    streams.open += 1
    try:
        sent_at = time.monotonic()
        while True:
            try:
                page = await asyncio.to_thread(_read, settings, tenant_id, job_id, after)
            except NotFound:
                return
            except Exception as exc:
                cause = unavailable(exc)
                if cause is None:
                    raise
                log.warning("events of job %s: not read, %s; trying again", job_id, cause.reason)
                page = JobEventPage(items=[], next_after=after, terminal=False)
            for event in page.items:
                yield format_sse_event(data_str=event.model_dump_json(), event=event.type, id=str(event.seq))
            if page.items:
                after, sent_at = page.next_after, time.monotonic()
            if page.terminal:
                return
            if len(page.items) == STREAM_PAGE_SIZE:
                continue
            if time.monotonic() - sent_at >= settings.events_keepalive_s:
                yield KEEPALIVE_COMMENT
                sent_at = time.monotonic()
            await asyncio.sleep(settings.events_poll_interval_s)
    finally:
        streams.open -= 1
