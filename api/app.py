"""The FastAPI application: routes, error handlers, and the start-up work of the service."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from celery import Celery
from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.errors import install_error_handlers
from api.gate import RequestGate
from api.rate_limit import RateLimiter
from api.routes import adapters, audits, datasets, deletions, events, health, jobs, registries
from api.services.auth import ensure_key
from api.services.base_models import ensure_builtin_base_models
from api.services.deletions import finish_deletions
from api.services.job_events import EventStreams
from api.services.jobs import delete_checkpoints_of, mark_sent, reap_stale_jobs, unsent_jobs
from api.services.retention import apply_retention
from lethe.queue import make_celery, send_job
from lethe.settings import Settings, get_settings
from models.db import session_scope
from models.tables import utcnow
from storage import ObjectStore, open_store

log = logging.getLogger("lethe.api")


def _operation_id(route: APIRoute) -> str:
    # The route function's name (`submit_forget_request`) reads well in a generated SDK.
    return route.name


def maintain_jobs(settings: Settings, queue: Celery, store: ObjectStore) -> None:
    """One pass of the reaper and the relay (blocking: the loop runs it in a thread).

    The reaper re-queues jobs whose worker is lost and fails stalled ones; the relay then sends every queued job
    that was never sent (new ones whose sender died after the commit, re-queued ones) or whose message was not
    claimed within the redelivery timeout (lost by the broker, or the broker flushed or restarted). Postgres is the
    truth; a message is only a wake-up, so one sent twice costs a worker one query. Sends the broker refuses are
    tried again at the next pass.
    """
    with session_scope(settings.database_url) as session:
        reaped = reap_stale_jobs(session, settings, utcnow())
    for job_id, attempt in reaped.requeued:
        log.warning("job %s re-queued: its worker was lost on attempt %d of %d", job_id, attempt, settings.max_attempts)
    for job_id, code in reaped.failed:
        log.warning("job %s failed: %s", job_id, code)
    if reaped.failed:
        # A job ended by the reaper has no worker to delete its checkpoint (a stalled one's may, too: harmless).
        with session_scope(settings.database_url) as session:
            delete_checkpoints_of(session, store, [job_id for job_id, _ in reaped.failed])
    with session_scope(settings.database_url) as session:
        unsent = unsent_jobs(session, settings.redeliver_after_s, utcnow())
    sent = []
    for job in unsent:
        try:
            send_job(queue, job.kind, str(job.job_id))
        except Exception as exc:
            # The broker is down or refusing: the rest would be refused too; the next pass tries them all again.
            log.warning("job %s: the broker refused its message (%s); the next pass tries again", job.job_id, exc)
            break
        sent.append(job.job_id)
        if job.sent_at is None:
            log.warning("job %s sent: it was queued with no message (re-queued, or its sender died)", job.job_id)
        else:
            log.warning("job %s sent again: not claimed since its message of %s", job.job_id, job.sent_at.isoformat())
    if sent:
        with session_scope(settings.database_url) as session:
            mark_sent(session, sent, utcnow())


def maintain_storage(settings: Settings, store: ObjectStore) -> None:
    """One pass of deletion upkeep (blocking): finish the object deletions a crash or a store outage cut off, then
    delete the evidence that tenants' retention has expired (api/services/deletions.py, retention.py)."""
    now = utcnow()
    finish_deletions(settings, store, now)
    apply_retention(settings, store, now)


async def _maintain_jobs_forever(settings: Settings, queue: Celery, store: ObjectStore) -> None:
    while True:
        try:
            # The pass blocks on the catalogue and the broker: in a thread, so requests are served meanwhile.
            await asyncio.to_thread(maintain_jobs, settings, queue, store)
        except Exception:
            log.exception("job maintenance pass failed")
        try:
            await asyncio.to_thread(maintain_storage, settings, store)
        except Exception:
            log.exception("storage maintenance pass failed")
        await asyncio.sleep(settings.reaper_interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with session_scope(settings.database_url) as session:
            ensure_builtin_base_models(session)
            if settings.bootstrap_api_key is not None:
                ensure_key(session, settings.bootstrap_api_key.get_secret_value())
        maintenance = asyncio.create_task(_maintain_jobs_forever(settings, app.state.queue, app.state.store))
        yield
        maintenance.cancel()

    app = FastAPI(
        title="Lethe",
        version="1.0.0",
        summary="Unlearning-as-a-service: make a language model forget, and prove how deep it went.",
        generate_unique_id_function=_operation_id,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = open_store(settings)
    app.state.queue = make_celery(settings)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.state.event_streams = EventStreams()
    install_error_handlers(app)
    app.add_middleware(RequestGate, settings=settings)
    for module in (health, datasets, registries, jobs, events, adapters, audits, deletions):
        app.include_router(module.router)
    return app
