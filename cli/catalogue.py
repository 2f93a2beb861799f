"""The admin commands that work on the catalogue directly (an operator runs them on the server host, with the
server's settings): one committed transaction per command, a refusal as one line and exit 2."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:  # the catalogue's imports wait for a command that uses it: `lethe --help` stays light
    from sqlalchemy.orm import Session

T = TypeVar("T")
_err = Console(stderr=True)


def ensure_embedded_catalogue() -> None:
    """The embedded default has no migrate step of its own: migrate the SQLite catalogue on first use."""
    from lethe.settings import get_settings

    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        from models.migrate import upgrade

        upgrade(settings.database_url)


def on_catalogue(command: str, action: Callable[[Session], T]) -> T:
    """`action` in one committed transaction; a refused one (an unknown name, a bad value) prints
    `lethe <command>: <why>` and exits 2."""
    from api.errors import LetheError
    from lethe.settings import get_settings
    from models.db import session_scope

    ensure_embedded_catalogue()
    try:
        with session_scope(get_settings().database_url) as session:
            return action(session)
    except LetheError as exc:
        _err.print(f"lethe {command}: {exc.detail}", markup=False, highlight=False)
        raise typer.Exit(2) from exc
