"""The gate every request passes before its body is read: the API key, the rate limit on failed keys, the
Content-Type and the body's size, and for a JSON body the limits of `lethe.safe_json`.

A pure ASGI middleware, so that it runs before FastAPI reads anything: an unauthenticated or oversized request is
answered without its body being received, a chunked body is counted as it streams and cut off at the limit, and a
JSON body is checked (depth, integer digits, NUL characters, lone surrogates) before any route parses it. What each
operation asks comes from the app's OpenAPI spec, the contract clients read: a key holding the scopes its security
requirement lists (api/scopes.py: `read` or `submit` by method for a tenant's operation, `admin` for the
installation's), no key where it lists none (public: the health checks and `GET /v1/signing-keys`, which a
third party reads to check a signed report), and the body media types it lists.
"""

import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import (
    Forbidden,
    InvalidInput,
    LetheError,
    MalformedBody,
    MethodNotAllowed,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    error_response,
)
from api.scopes import declare_scopes
from api.services.auth import AuthenticatedKey, authenticate, record_use
from lethe import safe_json
from lethe.settings import Settings
from models.db import get_sessionmaker, session_scope
from models.tables import utcnow

log = logging.getLogger("lethe.api")

# A multipart upload's boundaries and part headers around the file (the route checks the file itself).
MULTIPART_ENVELOPE_BYTES = 64 * 1024


@dataclass(frozen=True)
class RouteRule:
    """What a route asks of a request before it runs."""

    # The scopes the key must hold: None for a public operation (no key), empty for any valid key.
    scopes: tuple[str, ...] | None
    # The Content-Types its body may have; empty: it takes no body.
    media_types: tuple[str, ...]
    max_body_bytes: int
    limit_setting: str


class BodyTooLarge(HTTPException):
    """Raised into the reader of a chunked body that passes the limit; an HTTPException so that FastAPI's body
    parsing re-raises it as it is, and the error handlers render it as a 413."""

    def __init__(self, rule: RouteRule) -> None:
        super().__init__(413, f"body: larger than the limit of {rule.max_body_bytes} bytes ({rule.limit_setting})")


class AuthFailures:
    """Failed key checks per client address within a sliding window, in this process's memory (each API process
    counts its own). An address holds at most `limit` failures (a blocked one makes no more key checks)."""

    # Past this many addresses, those whose failures have all left the window are forgotten.
    MAX_ADDRESSES = 10_000

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= self.clock() - self.window_s:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures

    def retry_after_s(self, address: str) -> int | None:
        """Seconds until `address` may try again (its failures in the window fall below the limit), or None if it may
        now."""
        failures = self._recent(address)
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[-self.limit] + self.window_s - self.clock()))

    def record(self, address: str) -> None:
        if len(self._failures) >= self.MAX_ADDRESSES:
            for known in list(self._failures):
                self._recent(known)
        self._failures[address] = self._recent(address)
        self._failures[address].append(self.clock())


class RequestGate:
    """The ASGI middleware; `create_app` installs it around every route."""

    def __init__(self, app: ASGIApp, settings: Settings, public_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.settings = settings
        # GET paths outside the spec that need no key (GET /metrics, which checks its own token).
        self.public_paths = public_paths
        self.failures = AuthFailures(settings.auth_failure_limit, settings.auth_failure_window_s)
        self._operations: list[tuple[re.Pattern[str], str, RouteRule]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            admitted = await self._admit(scope, receive)
        except LetheError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, admitted, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        """The `receive` the route will read the body from; LetheError if the request goes no further."""
        rule, allowed = self._rule(scope)
        if rule.scopes is not None:
            api_key = await self._api_key(scope)
            missing = [needed for needed in rule.scopes if needed not in api_key.scopes]
            if missing:
                raise Forbidden(_lacking(missing, api_key.scopes))
            scope.setdefault("state", {}).update(api_key=api_key, tenant_id=api_key.tenant_id)
        if allowed:
            raise MethodNotAllowed(f"{scope['method']} {scope['path']}: allowed are {', '.join(allowed)}", allowed)
        if not rule.media_types:
            return receive  # the route takes no body: whatever was sent is never read
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type not in rule.media_types:
            raise UnsupportedMediaType(
                f"Content-Type: this route takes {' or '.join(rule.media_types)}, got {media_type or 'none'}"
            )
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > rule.max_body_bytes:
            raise PayloadTooLarge(
                f"body: {declared} bytes is larger than the limit of {rule.max_body_bytes} ({rule.limit_setting})"
            )
        if rule.media_types == ("application/json",):
            body = await _read_body(receive, rule)
            _check_json(body)
            return _replay(body, receive)
        return _counted(receive, rule)

    async def _api_key(self, scope: Scope) -> AuthenticatedKey:
        address = self._unthrottled_address(scope)
        key = Headers(scope=scope).get("x-api-key")
        try:
            return await run_in_threadpool(self._authenticate, key)
        except Unauthorized:
            if key:  # a missing key guesses nothing; a wrong one might be a guess
                self.failures.record(address)
            raise

    def _unthrottled_address(self, scope: Scope) -> str:
        """The client's address; TooManyRequests while it is locked out for too many failed key checks."""
        address = scope["client"][0] if scope.get("client") else "unknown"
        retry_after_s = self.failures.retry_after_s(address)
        if retry_after_s is not None:
            raise TooManyRequests(
                "too_many_failed_keys",
                f"X-API-Key: too many failed key checks from {address}; retry in {retry_after_s} s",
                retry_after_s,
            )
        return address

    def _authenticate(self, key: str | None) -> AuthenticatedKey:
        now = utcnow()
        with get_sessionmaker(self.settings.database_url)() as session:
            api_key = authenticate(session, key, now)
        if api_key.use_unrecorded(now):
            # A transaction of its own, at most once a minute per key: a hint of use that never fails the request.
            try:
                with session_scope(self.settings.database_url) as session:
                    record_use(session, api_key, now)
            except SQLAlchemyError as exc:
                log.warning("API key %s: its use was not recorded (%s)", api_key.id, exc)
        return api_key

    def _rule(self, scope: Scope) -> tuple[RouteRule, list[str]]:
        """The rule of the operation the request names; when its path has operations but not for this method, the
        first one's rule asking any valid key (the key check comes first: an anonymous client learns nothing of
        protected paths) and the methods the path allows (then 405)."""
        if self._operations is None:
            self._operations = self._operations_of(scope["app"])
        path = scope["path"]
        method = "get" if scope["method"] == "HEAD" else scope["method"].lower()  # HEAD is served wherever GET is
        on_path = [(operation, rule) for pattern, operation, rule in self._operations if pattern.match(path)]
        for operation, rule in on_path:
            if operation == method:
                return rule, []
        if on_path:
            allowed = {operation.upper() for operation, _ in on_path}
            first = on_path[0][1]
            any_key = () if first.scopes is not None else None
            return replace(first, scopes=any_key), sorted(allowed | ({"HEAD"} if "GET" in allowed else set()))
        # An unknown path needs a key too (then 404), so that an anonymous client finds only the public operations.
        return self._json_rule((), media_types=()), []

    def _operations_of(self, app: FastAPI) -> list[tuple[re.Pattern[str], str, RouteRule]]:
        """Each operation of the app's OpenAPI spec with its path as a pattern and its rule; the spec and the docs
        pages themselves, and the public paths outside the spec, are public operations too."""
        operations = []
        docs = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
        for path in (*docs, *self.public_paths):
            if path:
                operations.append((re.compile(f"^{re.escape(path)}$"), "get", self._json_rule(None, ())))
        # The spec with every operation's scopes (api/app.py declares them); declared again here, idempotently, so
        # that the gate enforces them on any app.
        for path, path_item in declare_scopes(app.openapi())["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
            for method, operation in path_item.items():
                operations.append((pattern, method, self._operation_rule(operation)))
        return operations

    def _operation_rule(self, operation: dict[str, Any]) -> RouteRule:
        requirements = operation.get("security", [])
        # Every requirement lists its scopes (declare_scopes): all of them are needed.
        needed = {scope for requirement in requirements for scopes in requirement.values() for scope in scopes}
        scopes = tuple(sorted(needed)) if requirements else None
        media_types = tuple(operation.get("requestBody", {}).get("content", {}))
        if "multipart/form-data" in media_types:
            limit = self.settings.max_upload_bytes + MULTIPART_ENVELOPE_BYTES
            return RouteRule(scopes, media_types, limit, "LETHE_MAX_UPLOAD_BYTES")
        return self._json_rule(scopes, media_types)

    def _json_rule(self, scopes: tuple[str, ...] | None, media_types: tuple[str, ...]) -> RouteRule:
        return RouteRule(scopes, media_types, self.settings.max_json_bytes, "LETHE_MAX_JSON_BYTES")


def _lacking(missing: list[str], held: frozenset[str]) -> str:
    """The 403's detail: the scope the operation needs and the scopes the key has."""
    detail = (
        f"X-API-Key: this operation needs the {' and '.join(missing)} scope; this key has "
        f"{', '.join(sorted(held)) or 'none'}"
    )
    if "admin" in missing:
        detail += (
            " (an operator gets an admin key by setting LETHE_ADMIN_API_KEY or with "
            "`lethe api-keys create --scope admin`)"
        )
    return detail


async def _read_body(receive: Receive, rule: RouteRule) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes the limit."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left; what came is all there is
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > rule.max_body_bytes:
            raise PayloadTooLarge(f"body: larger than the limit of {rule.max_body_bytes} bytes ({rule.limit_setting})")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _check_json(body: bytes) -> None:
    """MalformedBody if `body` is not JSON, InvalidInput naming where it breaks a limit of `lethe.safe_json`."""
    if not body:
        return  # the route's own validation says which fields are required
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"body: not UTF-8 (byte {exc.start})") from exc
    try:
        safe_json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"body: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except safe_json.JSONLimitError as exc:
        raise InvalidInput(f"{exc.path or 'body'}: {exc.message}") from exc


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then waits on the client (a disconnect) as the original does."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _counted(receive: Receive, rule: RouteRule) -> Receive:
    """A `receive` that raises BodyTooLarge into its reader once the body passes the limit."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > rule.max_body_bytes:
                raise BodyTooLarge(rule)
        return message

    return counted
