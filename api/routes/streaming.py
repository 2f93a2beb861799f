"""Routes that stream a stored object (adapter, report, per-example values): the response, and what they declare."""

from typing import Any

from fastapi.responses import StreamingResponse

from api.errors import NotFound, error_responses
from storage import ObjectStore


def streamed_object_responses(description: str, *media_types: str) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route streaming an object of the store: its 200 body, and its errors."""
    return {
        200: {"content": {media_type: {} for media_type in media_types}, "description": description},
        **error_responses(401, 404, 410, 422, 429),
    }


def streamed_object(
    store: ObjectStore, key: str, what: str, media_type: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    """A 200 streaming the object at `key`, once the store has said it is there (the status goes out before the
    first byte is read); NotFound naming `what` when the catalogue points at an object the store no longer has."""
    if not store.exists(key):
        raise NotFound(f"{what}: missing from the object store")
    return StreamingResponse(store.iter_chunks(key), media_type=media_type, headers=headers)
