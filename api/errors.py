"""Service errors with their HTTP status, the handlers that render every error as `{error, detail}`, and the spec
entries for them."""

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException

from models.db import unavailable

log = logging.getLogger("lethe.api")


class ErrorBody(BaseModel):
    """Every error Lethe returns: a stable code and a human-readable detail."""

    error: str
    detail: str


class LetheError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class MalformedBody(LetheError):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "malformed_body"


class Unauthorized(LetheError):
    status_code = status.HTTP_401_UNAUTHORIZED
    code = "unauthorized"


class NotFound(LetheError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(LetheError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class Gone(LetheError):
    """The resource existed and was deleted (by request or by the tenant's retention): `detail` says when."""

    status_code = status.HTTP_410_GONE
    code = "gone"


class Forbidden(LetheError):
    """The key is valid but not allowed to do this (a tenant's key on an admin operation)."""

    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class QuotaExceeded(LetheError):
    """The tenant stores as many bytes as it may: 403, since waiting does not help."""

    status_code = status.HTTP_403_FORBIDDEN
    code = "quota_exceeded"


class PayloadTooLarge(LetheError):
    status_code = status.HTTP_413_CONTENT_TOO_LARGE
    code = "payload_too_large"


class UnsupportedMediaType(LetheError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class InvalidInput(LetheError):
    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
    code = "invalid_input"


class CostExceeded(LetheError):
    """The job's estimated cost (lethe/costs.py) is over the cap: 422, the same request will never pass."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
    code = "cost_exceeded"


class MethodNotAllowed(LetheError):
    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    code = "method_not_allowed"

    def __init__(self, detail: str, allowed: list[str]) -> None:
        super().__init__(detail, {"Allow": ", ".join(allowed)})


class TooManyRequests(LetheError):
    """A limit that frees up with time; Retry-After says when to try again, in whole seconds (at least 1)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, code: str, detail: str, retry_after_s: float) -> None:
        super().__init__(detail, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})
        self.code = code


class ServiceUnavailable(LetheError):
    """A backing service cannot serve the request now; the client may retry after `retry_after_s` seconds."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"

    def __init__(self, detail: str, retry_after_s: int = 5) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


_DESCRIPTIONS = {
    400: "The body is not well-formed JSON or multipart; `detail` says where.",
    401: "Missing or unknown X-API-Key.",
    403: "quota_exceeded: the tenant's stored bytes would go over their limit; `detail` names the usage, the request's "
    "size and the limit.",
    404: "No such resource for this tenant (or its stored object is missing).",
    409: "The resource is not in a state that allows this, or the Idempotency-Key was used with another request.",
    410: "gone: the resource was deleted; `detail` says when, why (request or retention) and names the deletion "
    "(its signed receipt: GET /v1/deletions/{deletion_id}).",
    413: "The body is larger than the server accepts (LETHE_MAX_UPLOAD_BYTES, LETHE_MAX_JSON_BYTES).",
    415: "The Content-Type is not one this route accepts; `detail` names the one it does.",
    422: "The request is invalid; `detail` names the field (and line) that is wrong.",
    429: "rate_limited: too many writes, too_many_active_jobs: too many queued and running jobs, or "
    "too_many_failed_keys: too many failed API-key checks from this address; `detail` names the limit, and the "
    "Retry-After header says in how many seconds to try again.",
    503: "A backing service (catalogue, broker, object store) is busy or unavailable; retry after `Retry-After` "
    "seconds.",
}


_RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}

# The codes of errors Starlette raises itself (an unknown path, a method a path does not have, a body it cannot parse).
_HTTP_ERROR_CODES = {
    400: MalformedBody.code,
    404: NotFound.code,
    405: MethodNotAllowed.code,
    413: PayloadTooLarge.code,
}


_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again (a whole number, at least 1).",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    },
    503: {"headers": _RETRY_AFTER_HEADER},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries so every route declares the errors it can return."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code], **_HEADERS.get(code, {})} for code in codes}


def job_submission_responses() -> dict[int | str, dict[str, Any]]:
    """The errors of a route that creates a job: its limits (active jobs, stored bytes, estimated cost) too."""
    responses = error_responses(400, 401, 403, 409, 413, 415, 422, 429, 503)
    responses[422] = {
        **responses[422],
        "description": f"{_DESCRIPTIONS[422]} cost_exceeded: the job's estimated cost is over the limit; `detail` "
        "names the estimate, its terms and the limit.",
    }
    return responses


def _render(status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"error": code, "detail": detail}, headers=headers)


def error_response(exc: LetheError) -> JSONResponse:
    """The response for a service error: its status, `{error, detail}` and its headers (Allow, Retry-After)."""
    return _render(exc.status_code, exc.code, exc.detail, exc.headers)


# A busy catalogue frees up within a second or two; an unreachable one takes longer to come back.
_BUSY_RETRY_AFTER_S, _UNREACHABLE_RETRY_AFTER_S = 1, 5


def _location(loc: tuple[Any, ...]) -> str:
    # ("body", "method", "params", "learning_rate") -> "method.params.learning_rate"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def format_validation_errors(errors: list[Any]) -> str:
    return "; ".join(f"{_location(tuple(e['loc']))}: {e['msg']}" for e in errors)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{error, detail}`: Lethe's own, request validation, Starlette's, and any other exception
    (a 500 whose body says nothing of the code; the traceback goes to the log)."""

    async def lethe_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LetheError)
        return error_response(exc)

    async def catalogue_error(request: Request, exc: Exception) -> JSONResponse:
        """A busy or unreachable catalogue is a 503 the client can retry; any other database error is a bug (500)."""
        cause = unavailable(exc)
        if cause is None:
            return await unexpected_error(request, exc)
        retry_after_s = _BUSY_RETRY_AFTER_S if cause.busy else _UNREACHABLE_RETRY_AFTER_S
        return await lethe_error(request, ServiceUnavailable(f"catalogue: {cause.reason}; retry later", retry_after_s))

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _render(422, InvalidInput.code, format_validation_errors(list(exc.errors())))

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_ERROR_CODES.get(exc.status_code, LetheError.code)
        return _render(exc.status_code, code, str(exc.detail), exc.headers)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return _render(500, "internal_error", "an unexpected error occurred; it has been logged")

    app.add_exception_handler(LetheError, lethe_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(sa_exc.DBAPIError, catalogue_error)
    app.add_exception_handler(sa_exc.TimeoutError, catalogue_error)
