"""Cursor pagination of the list routes: the query parameters every list takes and the opaque cursor.

A list is ordered newest first by (created_at, id) and paged by keyset (models/repositories.py `PageQuery`): the
cursor is the last row's (created_at, id), base64url-encoded JSON. Clients treat it as opaque; it only ever comes
from a `next_cursor` this API returned. A page holds `limit` items at most, and `next_cursor` is null on the last.
"""

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, TypeVar

from fastapi import Depends, Query

from api.errors import InvalidInput
from models.repositories import PageQuery

T = TypeVar("T")

DEFAULT_LIMIT, MAX_LIMIT = 50, 200


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """The cursor that continues a list after the row created at `created_at` with id `row_id`."""
    raw = json.dumps([created_at.isoformat(), str(row_id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor continues after; InvalidInput naming `cursor` for anything this API did not
    issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        at = datetime.fromisoformat(created_at)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(row_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            "cursor: not a cursor this API issued; pass the `next_cursor` of the previous page unchanged, or omit "
            "it for the first page"
        ) from exc


def get_page_query(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, 1 to {MAX_LIMIT}.")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="The `next_cursor` of the previous page; omit it for the first page."),
    ] = None,
    created_after: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only items created at or after this time (ISO 8601 with a time zone).",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    created_before: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Only items created before this time (ISO 8601 with a time zone).",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
) -> PageQuery:
    """The page a list request asks for; 422 naming the parameter that is wrong."""
    after_time = _moment("created_after", created_after)
    before_time = _moment("created_before", created_before)
    if after_time is not None and before_time is not None and after_time >= before_time:
        raise InvalidInput("created_after: must be earlier than created_before")
    after = decode_cursor(cursor) if cursor is not None else None
    return PageQuery(limit=limit, after=after, created_after=after_time, created_before=before_time)


def _moment(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 date and time with a time zone (`2026-11-30T12:00:00Z`); InvalidInput naming `name` otherwise.
    Parsed here rather than by pydantic, whose lax mode takes a number as seconds since 1970."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidInput(f"{name}: not an ISO 8601 date and time with a time zone, e.g. 2026-11-30T12:00:00Z")
    return moment


PageDep = Annotated[PageQuery, Depends(get_page_query)]


def page_of(
    rows: Sequence[T], page: PageQuery, key: Callable[[T], tuple[datetime, uuid.UUID]]
) -> tuple[list[T], str | None]:
    """The page's rows (a repository returns one more than `limit` when another page follows) and the cursor of the
    next page, or None on the last."""
    items = list(rows[: page.limit])
    if len(rows) <= page.limit:
        return items, None
    return items, encode_cursor(*key(items[-1]))
