"""Routes that stream a stored object (adapter, report, per-example values): the response, and what they declare."""

from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.errors import NotFound, error_responses
from storage import ObjectStore

# The schema of a body that is a file of bytes: what SDK generators turn into bytes (or a file) rather than drop.
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
# A text body (HTML): a generated SDK returns it as a string.
TEXT: dict[str, Any] = {"type": "string"}


def streamed_object_responses(
    description: str,
    content: dict[str, dict[str, Any]],
    model: type[BaseModel] | None = None,
    headers: dict[str, dict[str, Any]] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route streaming an object of the store: its 200 body (`content`: media type -> schema;
    `model`: the schema of its application/json body), its headers, and its errors."""
    ok: dict[str, Any] = {
        "description": description,
        "content": {media_type: {"schema": schema} if schema else {} for media_type, schema in content.items()},
    }
    if model is not None:
        ok["model"] = model  # FastAPI puts its schema under application/json
    if headers:
        ok["headers"] = headers
    return {200: ok, **error_responses(401, 404, 410, 422, 429)}


def streamed_object(
    store: ObjectStore, key: str, what: str, media_type: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """A 200 streaming the object at `key`, once the store has said it is there (the status goes out before the
    first byte is read); NotFound naming `what` when the catalogue points at an object the store no longer has."""
    if not store.exists(key):
        raise NotFound(f"{what}: missing from the object store")
    return StreamingResponse(store.iter_chunks(key), media_type=media_type, headers=headers)
