"""Idempotency-Key on the POSTs that create: a retry with the key gets the first response, never a second creation."""

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from api.errors import Conflict
from models.db import UnitOfWork
from models.repositories import IdempotencyKeyRepository
from models.tables import IdempotencyKey, utcnow

REPLAYED_HEADER = "Idempotent-Replayed"


def replayable(status_code: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of a creating route's success response, which a retry with its key replays."""
    header = {
        "description": "`true` on a replay of the first response to this Idempotency-Key; absent otherwise.",
        "schema": {"type": "string", "enum": ["true"]},
    }
    return {status_code: {"headers": {REPLAYED_HEADER: header}}}


ResponseT = TypeVar("ResponseT", bound=BaseModel)


@dataclass(frozen=True)
class CreatingRequest:
    """A creating request: the operation a key is scoped to (with the tenant), the Idempotency-Key if it was sent,
    and the request's fingerprint."""

    operation: str
    key: str | None
    fingerprint: str


def json_fingerprint(body: BaseModel) -> str:
    """SHA-256 of the validated body as canonical JSON (sorted keys, no spaces, defaults filled in): two bodies
    that validate to the same request have one fingerprint, whatever their key order or spacing."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def upload_fingerprint(content: bytes, name: str, kind: str) -> str:
    """SHA-256 over the file's bytes (by their SHA-256), the dataset's name and its kind."""
    parts = {"file_sha256": hashlib.sha256(content).hexdigest(), "name": name, "kind": kind}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def create_once(
    work: UnitOfWork,
    tenant_id: uuid.UUID,
    request: CreatingRequest,
    ttl_s: float,
    status_code: int,
    create: Callable[[], ResponseT],
) -> ResponseT | JSONResponse:
    """`create()`'s response, stored with the key in the work's transaction; for a key already used, the first
    response replayed (Conflict if that request was a different one). Without a key, just `create()`.

    Two concurrent requests with one key may both run `create()`, but the unique (tenant, operation, key) lets only
    one commit: the other's transaction, with all it created (and its object in the store, its job's message),
    is rolled back, and it answers with the first one's response.
    """
    if request.key is None:
        return create()
    repository = IdempotencyKeyRepository(work.session)
    expired_before = utcnow() - timedelta(seconds=ttl_s)
    stored = repository.get(tenant_id, request.operation, request.key)
    if stored is not None and stored.created_at >= expired_before:
        return _replay(stored, request)
    response = create()
    # Writes only now (on SQLite a write takes the database's lock until the commit), after create()'s own.
    repository.delete_expired(tenant_id, expired_before)
    try:
        recorded = repository.add(
            IdempotencyKey(
                tenant_id=tenant_id,
                operation=request.operation,
                key=request.key,
                fingerprint=request.fingerprint,
                status_code=status_code,
                response_body=response.model_dump(mode="json"),
            )
        )
    except IntegrityError:
        # Another request with this key committed first: undo all this one did, and answer as a retry of it.
        work.rollback()
        winner = repository.get(tenant_id, request.operation, request.key)
        if winner is None:
            raise
        return _replay(winner, request)
    # The client got a 503, not this response, if the broker refuses the job: a retry must be able to create.
    key_id = recorded.id
    work.undo_if_refused(lambda session: IdempotencyKeyRepository(session).delete(key_id))
    return response


def _replay(stored: IdempotencyKey, request: CreatingRequest) -> JSONResponse:
    if stored.fingerprint != request.fingerprint:
        raise Conflict(
            f"Idempotency-Key {request.key!r} was already used with a different request to {request.operation}; "
            "send a new key for a new request"
        )
    return JSONResponse(stored.response_body, status_code=stored.status_code, headers={REPLAYED_HEADER: "true"})
