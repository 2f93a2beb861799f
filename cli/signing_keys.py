"""`lethe signing-keys rotate | list`: the installation's signing keys, on the server's host (admin).

Both work on the catalogue (LETHE_DATABASE_URL) and `rotate` writes the new private key into LETHE_SIGNING_KEY_DIR,
so run them where the API runs (`docker compose exec api lethe signing-keys rotate`); over HTTP the same rotation is
`POST /v1/signing-keys/rotate` with the admin key, and the published list is `GET /v1/signing-keys`.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="The keys that sign audit reports and deletion receipts.", no_args_is_help=True)


@app.command()
def rotate() -> None:
    """Make a new current signing key and retire the previous one (kept published: what it signed still verifies)."""
    from api.services.signing_keys import rotate_signing_key
    from cli.catalogue import ensure_embedded_catalogue
    from lethe.settings import get_settings
    from models.db import session_scope

    settings = get_settings()
    ensure_embedded_catalogue()
    with session_scope(settings.database_url) as session:
        rotation = rotate_signing_key(settings, session)
        current = rotation.current.key_id
    retired = ", ".join(rotation.retired) or "none"
    typer.echo(f"current signing key {current} (private key in {settings.signing_keys_dir}); retired: {retired}")


@app.command("list")
def list_keys() -> None:
    """Every key ever used, oldest first: id, valid from, retired at (or `current`)."""
    from api.services.signing_keys import list_signing_keys
    from cli.catalogue import ensure_embedded_catalogue
    from lethe.settings import get_settings
    from models.db import session_scope

    settings = get_settings()
    ensure_embedded_catalogue()
    with session_scope(settings.database_url) as session:
        rows = [
            (row.key_id, row.valid_from.isoformat(), row.retired_at.isoformat() if row.retired_at else "current")
            for row in list_signing_keys(session)
        ]
    if not rows:
        typer.echo("no signing keys yet (the API makes the first one when it starts)")
    for key_id, valid_from, retired in rows:
        typer.echo(f"{key_id}  valid from {valid_from}  {retired}")
