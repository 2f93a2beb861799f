"""The FastAPI application: routes, error handlers, and the start-up work of the service."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.errors import install_error_handlers
from api.gate import RequestGate
from api.rate_limit import RateLimiter
from api.routes import adapters, audits, datasets, health, jobs, registries
from api.services.auth import ensure_key
from api.services.base_models import ensure_builtin_base_models
from api.services.jobs import reap_stale_jobs
from lethe.queue import make_celery
from lethe.settings import Settings, get_settings
from models.db import session_scope
from storage import open_store

log = logging.getLogger("lethe.api")


def _operation_id(route: APIRoute) -> str:
    # The route function's name (`submit_forget_request`) reads well in a generated SDK.
    return route.name


def _reap_once(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        for job_id in reap_stale_jobs(session, settings.heartbeat_timeout_s):
            log.warning("job %s failed: worker_lost", job_id)


async def _reap_forever(settings: Settings) -> None:
    while True:
        try:
            # In a thread: the catalogue blocks (up to its busy timeout), and the event loop serves every request.
            await asyncio.to_thread(_reap_once, settings)
        except Exception:
            log.exception("reaper pass failed")
        await asyncio.sleep(settings.reaper_interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with session_scope(settings.database_url) as session:
            ensure_builtin_base_models(session)
            if settings.bootstrap_api_key is not None:
                ensure_key(session, settings.bootstrap_api_key.get_secret_value())
        reaper = asyncio.create_task(_reap_forever(settings))
        yield
        reaper.cancel()

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
    install_error_handlers(app)
    app.add_middleware(RequestGate, settings=settings)
    for module in (health, datasets, registries, jobs, adapters, audits):
        app.include_router(module.router)
    return app
