"""What the client commands print: rich tables for people, plain JSON (`--json`) for scripts."""

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON instead of a table (for scripts)")]
LimitOption = Annotated[int, typer.Option(min=1, max=200, help="items per page")]
CursorOption = Annotated[str | None, typer.Option(help="the page after this cursor (printed under a page)")]
AllOption = Annotated[bool, typer.Option("--all", help="follow next_cursor to the last page")]
CreatedAfterOption = Annotated[str | None, typer.Option(help="ISO 8601: only those created at or after it")]
CreatedBeforeOption = Annotated[str | None, typer.Option(help="ISO 8601: only those created before it")]

Column = tuple[str, Callable[[dict[str, Any]], object]]
# Columns of ids are never folded: a script (or a user's copy and paste) needs each id on one line.
WHOLE = {"id", "job", "adapter", "parent"}


def stdout() -> Console:
    # Into a pipe or a file, tables are as wide as they need (up to $COLUMNS, else 200), not the 80 columns rich
    # assumes without a terminal: a script reads whole names and timestamps.
    if sys.stdout.isatty():
        return Console()
    return Console(width=int(os.environ.get("COLUMNS") or 200))


def stderr() -> Console:
    return Console(stderr=True)


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def field(name: str) -> Callable[[dict[str, Any]], object]:
    return lambda item: item.get(name)


def created(item: dict[str, Any]) -> str:
    """`created_at` to the second, in UTC as the API gives it: 2026-11-30 12:51:56."""
    return str(item.get("created_at") or "-")[:19].replace("T", " ")


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def table(items: Sequence[dict[str, Any]], columns: Sequence[Column], title: str | None = None) -> Table:
    grid = Table(title=title, title_justify="left")
    for header, _ in columns:
        grid.add_column(header, no_wrap=header in WHOLE, overflow="fold")
    for item in items:
        grid.add_row(*(fmt(get(item)) for _, get in columns))
    return grid


def show_record(record: dict[str, Any], fields: Sequence[Column], as_json: bool) -> None:
    if as_json:
        print_json(record)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, get in fields:
        grid.add_row(name, fmt(get(record)))
    stdout().print(grid)


def page_params(
    limit: int, cursor: str | None, created_after: str | None, created_before: str | None, **filters: object
) -> dict[str, object]:
    """The query of a list route (api/pagination.py): the page, the created range and the route's own filters."""
    return {
        **filters,
        "limit": limit,
        "cursor": cursor,
        "created_after": created_after,
        "created_before": created_before,
    }


def show_page(
    items: list[dict[str, Any]], next_cursor: str | None, columns: Sequence[Column], as_json: bool, noun: str
) -> None:
    if as_json:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    console = stdout()
    if not items:
        console.print(f"no {noun}")
    else:
        console.print(table(items, columns))
    if next_cursor:
        console.print(f"more: --cursor {next_cursor}", highlight=False)


def show_receipt(what: str, signed: dict[str, Any], as_json: bool) -> None:
    """A deletion's signed receipt: all of it for `--json` (keep it: it proves the deletion), else a summary."""
    if as_json:
        print_json(signed)
        return
    found = signed.get("receipt")
    receipt: dict[str, Any] = found if isinstance(found, dict) else {}
    objects, resources = receipt.get("objects") or [], receipt.get("resources") or []
    rows = sum(receipt.get("rows", {}).values()) if isinstance(receipt.get("rows"), dict) else 0
    stdout().print(
        f"deleted {what} at {receipt.get('deleted_at', '-')}: {len(resources)} resources, {rows} rows, "
        f"{len(objects)} stored objects; receipt {receipt.get('id', '-')} (GET /v1/deletions/{receipt.get('id', '')}, "
        "or --json for the signed receipt)",
        highlight=False,
    )
