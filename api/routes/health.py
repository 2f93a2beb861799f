from datetime import timedelta

from celery import Celery
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, Readiness
from lethe.settings import Settings
from models.db import get_engine, get_sessionmaker
from models.repositories import WorkerRepository
from models.tables import utcnow

router = APIRouter(tags=["health"])


def _check_catalogue(database_url: str) -> None:
    with get_engine(database_url).connect() as connection:
        connection.execute(text("SELECT 1"))


def _check_broker(queue: Celery) -> None:
    with queue.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)


def _check_workers(settings: Settings) -> None:
    """At least one worker process beat within the heartbeat timeout (each beats while it lives, jobs or not)."""
    since = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    with get_sessionmaker(settings.database_url)() as session:
        if not WorkerRepository(session).alive_since(since):
            raise RuntimeError(
                f"no worker has beaten in the last {settings.heartbeat_timeout_s:.0f} s: jobs would wait in the queue"
            )


@router.get("/healthz", response_model=Health)
async def health() -> Health:
    """The process is up."""
    # On the event loop itself, not in the threadpool the blocking routes share: it answers while every thread of
    # that pool waits on the catalogue, and it is slow only when the loop is (tests/e2e/test_concurrency.py).
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def ready(request: Request) -> JSONResponse:
    """Catalogue, broker and object store all answer, and at least one worker is alive to take jobs."""
    state = request.app.state
    checks: dict[str, str] = {}
    for name, probe in [
        ("catalogue", lambda: _check_catalogue(state.settings.database_url)),
        ("broker", lambda: _check_broker(state.queue)),
        ("storage", lambda: state.store.check()),
        ("worker", lambda: _check_workers(state.settings)),
    ]:
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}"
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())
