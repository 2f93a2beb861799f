"""One logging set-up for the API and the worker: every line through structlog, as JSON or for a terminal.

Lethe's code logs with the standard library (`logging.getLogger("lethe.api")`), and so do uvicorn, Celery and the
libraries under them; structlog's `ProcessorFormatter` on the root handler renders all of those lines, and
structlog's own loggers, the same way: timestamp, level, logger, event, the service, and the ids the line happened
under. Those ids come from context variables, so they need not be passed down the call stack: `request_id` from
asgi-correlation-id's middleware (the API), `job_id`, `attempt`, `task_id` and the submitting request's
`request_id` from `bound_contextvars` around a job or a task (the worker).
"""

import logging
import sys
from typing import Any

import structlog
from asgi_correlation_id import correlation_id
from structlog.typing import EventDict, Processor, WrappedLogger

# Loggers that install handlers of their own (uvicorn's dictConfig does, when it starts): their lines go to the
# root handler instead, so that they are rendered like every other line.
ADOPTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def add_request_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """The id of the HTTP request this line happened under (asgi-correlation-id's context variable), unless a
    `request_id` is bound already (a worker binds the id of the request that submitted its job)."""
    if "request_id" not in event_dict:
        request_id = correlation_id.get()
        if request_id:
            event_dict["request_id"] = request_id
    return event_dict


def _add_service(service: str) -> Processor:
    def add_service(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def current_request_id() -> str | None:
    """The request id this code runs under: the API's current request, or the one bound around a worker's job."""
    return correlation_id.get() or structlog.contextvars.get_contextvars().get("request_id")


def configure_logging(service: str, json: bool, level: str = "INFO", stream: Any = None) -> logging.Handler:
    """Route every log line of this process (root logger, uvicorn's, Celery's, structlog's) through one handler on
    `stream` (stderr by default), rendered as JSON lines or for a terminal; returns that handler.

    Idempotent: a second call replaces the handler of the first (the app factory runs once per app, tests make many).
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        _add_service(service),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=_is_tty(stream))
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        # A traceback as one string field of the line, not lines of its own that a log pipeline would split up.
        final.append(structlog.processors.format_exc_info)
    final.append(renderer)
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("lethe")
    root = logging.getLogger()
    # Ours from an earlier call, and a bare stream handler that `logging.basicConfig` (or a module-level
    # `logging.info` before any set-up) left: each would print every line a second time. Handlers of other kinds
    # (a test runner's capture) stay.
    for old in [h for h in root.handlers if h.get_name() == "lethe" or type(h) is logging.StreamHandler]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings (a library's DeprecationWarning, Celery's SecurityWarning) become log lines too, not raw
    # stderr text a log pipeline cannot parse.
    logging.captureWarnings(True)
    adopt_library_loggers()
    return handler


def adopt_library_loggers(names: tuple[str, ...] = ADOPTED_LOGGERS) -> None:
    """Send these libraries' lines to the root handler. uvicorn installs handlers of its own when it starts
    (`uvicorn.run`, after the app was made: the API calls this again from its lifespan), MLflow when it is first
    imported (worker/tracking.py)."""
    for name in names:
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True


def _is_tty(stream: Any) -> bool:
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return bool(isatty and isatty())
