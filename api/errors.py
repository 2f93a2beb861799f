"""Service errors with their HTTP status, one handler that renders them, and the spec entries for them."""

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc

from models.db import unavailable


class ErrorBody(BaseModel):
    """Every error Lethe returns: a stable code and a human-readable detail."""

    error: str
    detail: str


class LetheError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(LetheError):
    status_code = status.HTTP_401_UNAUTHORIZED
    code = "unauthorized"


class NotFound(LetheError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(LetheError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class PayloadTooLarge(LetheError):
    status_code = status.HTTP_413_CONTENT_TOO_LARGE
    code = "payload_too_large"


class InvalidInput(LetheError):
    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
    code = "invalid_input"


class ServiceUnavailable(LetheError):
    """A backing service cannot serve the request now; the client may retry after `retry_after_s` seconds."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"

    def __init__(self, detail: str, retry_after_s: int = 5) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


_DESCRIPTIONS = {
    401: "Missing or unknown X-API-Key.",
    404: "No such resource for this tenant.",
    409: "The resource is not in a state that allows this, or the Idempotency-Key was used with another request.",
    413: "The upload is larger than the server accepts.",
    422: "The request is invalid; `detail` names the field (and line) that is wrong.",
    503: "A backing service (catalogue, broker, object store) is busy or unavailable; retry after `Retry-After` "
    "seconds.",
}


_RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries so every route declares the errors it can return."""
    return {
        code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
        | ({"headers": _RETRY_AFTER_HEADER} if code == 503 else {})
        for code in codes
    }


def _render(status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"error": code, "detail": detail}, headers=headers)


# A busy catalogue frees up within a second or two; an unreachable one takes longer to come back.
_BUSY_RETRY_AFTER_S, _UNREACHABLE_RETRY_AFTER_S = 1, 5


def _location(loc: tuple[Any, ...]) -> str:
    # ("body", "method", "params", "learning_rate") -> "method.params.learning_rate"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def format_validation_errors(errors: list[Any]) -> str:
    return "; ".join(f"{_location(tuple(e['loc']))}: {e['msg']}" for e in errors)


def install_error_handlers(app: FastAPI) -> None:
    async def lethe_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LetheError)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServiceUnavailable) else None
        return _render(exc.status_code, exc.code, exc.detail, headers)

    async def catalogue_error(request: Request, exc: Exception) -> JSONResponse:
        """A busy or unreachable catalogue is a 503 the client can retry; any other database error is a bug (500)."""
        cause = unavailable(exc)
        if cause is None:
            raise exc
        retry_after_s = _BUSY_RETRY_AFTER_S if cause.busy else _UNREACHABLE_RETRY_AFTER_S
        return await lethe_error(request, ServiceUnavailable(f"catalogue: {cause.reason}; retry later", retry_after_s))

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _render(422, "invalid_input", format_validation_errors(list(exc.errors())))

    app.add_exception_handler(LetheError, lethe_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(sa_exc.DBAPIError, catalogue_error)
    app.add_exception_handler(sa_exc.TimeoutError, catalogue_error)
