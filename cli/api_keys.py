"""`lethe api-keys`: create, list, revoke and rotate API keys on the catalogue directly (an operator runs it on the
server host, with the server's settings). A key is printed once, alone on stdout, so a script can capture it."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cli.catalogue import on_catalogue

if TYPE_CHECKING:  # the catalogue's imports wait for a command that uses it: `lethe --help` stays light
    from sqlalchemy.orm import Session

app = typer.Typer(
    name="api-keys",
    help="Manage API keys: scopes `read`, `submit` (a tenant's), `admin` (the installation's).",
    no_args_is_help=True,
)
_err = Console(stderr=True)
T = TypeVar("T")


def _run(action: Callable[[Session], T]) -> T:
    return on_catalogue("api-keys", action)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


@app.command()
def create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for (made if new).")] = "default",
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="read, submit or admin; repeat for several (default: read and submit)."),
    ] = None,
    name: Annotated[str, typer.Option(help="A label: who or what holds the key.")] = "",
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from api.scopes import TENANT_SCOPES
    from api.services import api_keys

    issued = _run(lambda session: api_keys.create(session, tenant, scope or list(TENANT_SCOPES), name))
    typer.echo(issued.key)
    _err.print(
        f"key {issued.view.id} ({issued.view.prefix}...) for tenant {tenant}: {', '.join(issued.view.scopes)}",
        markup=False,
        highlight=False,
    )


@app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Revoked and expired keys too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key, for scripts.")] = False,
) -> None:
    """List keys, newest first: prefix, scopes, state and last use, never the key."""
    from api.services import api_keys

    def every_key(session: Session) -> list[api_keys.ApiKeyView]:
        views, cursor = [], None
        while True:
            page = api_keys.list_keys(session, 200, cursor, tenant, None if all_ else "active")
            views += page.items
            if page.next_cursor is None:
                return views
            cursor = page.next_cursor

    views = _run(every_key)
    if as_json:
        for view in views:
            typer.echo(json.dumps(dataclasses.asdict(view), default=_jsonable))
        return
    table = Table("id", "tenant", "prefix", "scopes", "name", "status", "created", "last used", "expires")
    for view in views:
        table.add_row(
            str(view.id),
            view.tenant,
            view.prefix,
            ",".join(view.scopes),
            view.name,
            view.status,
            _when(view.created_at),
            _when(view.last_used_at),
            _when(view.expires_at),
        )
    Console(width=200).print(table)


def _jsonable(value: object) -> str:
    """Timestamps as ISO 8601, ids as strings (`json.dumps`'s `default`)."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


@app.command()
def revoke(
    key_id: Annotated[uuid.UUID, typer.Argument(metavar="KEY_ID", help="The key's id (see `lethe api-keys list`).")],
) -> None:
    """Revoke a key now: its next request is refused (401)."""
    from api.services import api_keys

    view = _run(lambda session: api_keys.revoke(session, key_id))
    typer.echo(f"revoked key {view.id} ({view.prefix}...) of tenant {view.tenant} at {_when(view.revoked_at)}")


@app.command()
def rotate(
    key_id: Annotated[uuid.UUID, typer.Argument(metavar="KEY_ID", help="The key's id (see `lethe api-keys list`).")],
    grace_s: Annotated[int, typer.Option("--grace-s", help="Seconds the old key keeps working (0: revoked now).")] = 0,
) -> None:
    """Replace a key by a new one with its tenant, scopes and name; print the new key once."""
    from api.services import api_keys

    issued = _run(lambda session: api_keys.rotate(session, key_id, grace_s))
    typer.echo(issued.key)
    ending = f"keeps working for {grace_s} s" if grace_s else "is revoked"
    _err.print(f"key {key_id} replaced by {issued.view.id}; the old key {ending}", markup=False, highlight=False)
