"""What the routes that stream a stored object (adapter, report, per-example values) declare in the spec."""

from typing import Any

from api.errors import error_responses


def streamed_object_responses(description: str, *media_types: str) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route streaming an object of the store: its 200 body, and its errors."""
    return {
        200: {"content": {media_type: {} for media_type in media_types}, "description": description},
        **error_responses(401, 404, 422),
    }
