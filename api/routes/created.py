"""The `Location` of what a POST created (201) or accepted (202): sent on the first response and on its replays."""

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.services.idempotency import replayable

ResponseT = TypeVar("ResponseT", bound=BaseModel)


def located_responses(status_code: int, what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entry of a creating route's success response: its replay header and its `Location`."""
    responses = replayable(status_code)
    responses[status_code]["headers"]["Location"] = {
        "description": f"The path of {what} (relative to the API's base URL).",
        "required": True,
        "schema": {"type": "string"},
    }
    return responses


def located(
    result: ResponseT | JSONResponse, response: Response, location: Callable[[dict[str, Any]], str]
) -> ResponseT | JSONResponse:
    """`result` with its `Location` header, `location` of its JSON body (a replay is a stored body, not a model)."""
    if isinstance(result, JSONResponse):
        result.headers["Location"] = location(json.loads(bytes(result.body)))
    else:
        response.headers["Location"] = location(result.model_dump(mode="json"))
    return result
