"""Service errors with their HTTP status, the handlers that render every error as `{error, detail}`, and the spec
entries for them."""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

log = logging.getLogger("lethe.api")


class ErrorBody(BaseModel):
    """Every error Lethe returns: a stable code and a human-readable detail."""

    error: str
    detail: str


class LetheError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

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


class PayloadTooLarge(LetheError):
    status_code = status.HTTP_413_CONTENT_TOO_LARGE
    code = "payload_too_large"


class UnsupportedMediaType(LetheError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class InvalidInput(LetheError):
    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
    code = "invalid_input"


class MethodNotAllowed(LetheError):
    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    code = "method_not_allowed"

    def __init__(self, detail: str, allowed: list[str]) -> None:
        super().__init__(detail, {"Allow": ", ".join(allowed)})


class TooManyRequests(LetheError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "too_many_requests"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})


class ServiceUnavailable(LetheError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "service_unavailable"


_DESCRIPTIONS = {
    400: "The body is not well-formed JSON or multipart; `detail` says where.",
    401: "Missing or unknown X-API-Key.",
    404: "No such resource for this tenant (or its stored object is missing).",
    409: "The resource is not in a state that allows this.",
    413: "The body is larger than the server accepts (LETHE_MAX_UPLOAD_BYTES, LETHE_MAX_JSON_BYTES).",
    415: "The Content-Type is not one this route accepts; `detail` names the one it does.",
    422: "The request is invalid; `detail` names the field (and line) that is wrong.",
    429: "Too many failed API-key checks from this address; retry after `Retry-After` seconds.",
    503: "A backing service (catalogue, broker, object store) is unavailable.",
}

# The codes of errors Starlette raises itself (an unknown path, a method a path does not have, a body it cannot parse).
_HTTP_ERROR_CODES = {
    400: MalformedBody.code,
    404: NotFound.code,
    405: MethodNotAllowed.code,
    413: PayloadTooLarge.code,
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries so every route declares the errors it can return."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def _render(status_code: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"error": code, "detail": detail}, headers=headers)


def error_response(exc: LetheError) -> JSONResponse:
    """The response for a service error: its status, `{error, detail}` and its headers (Allow, Retry-After)."""
    return _render(exc.status_code, exc.code, exc.detail, exc.headers)


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
