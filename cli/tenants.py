"""`lethe tenants`: an installation's settings of a tenant, on the catalogue directly (what
`PUT /v1/tenants/{tenant}/retention` sets over HTTP with an admin key)."""

from typing import Annotated

import typer

from cli.catalogue import on_catalogue

app = typer.Typer(help="Tenants' settings: how long their evidence is kept.", no_args_is_help=True)


@app.command()
def retention(
    tenant: Annotated[str, typer.Argument(help="The tenant's name.")],
    days: Annotated[
        int | None,
        typer.Option(min=1, max=36500, help="Keep job evidence this many days after the job finished."),
    ] = None,
    forever: Annotated[bool, typer.Option("--forever", help="Keep evidence forever (the default).")] = False,
) -> None:
    """Set how long the tenant's job evidence (per-example values, pre-forgetting state, checkpoints) is kept; the
    API's maintenance pass deletes what is older, one signed receipt per job (GET /v1/deletions)."""
    from api.services.retention import set_retention

    if (days is None) == (not forever):
        typer.echo("lethe tenants retention: give --days N or --forever", err=True)
        raise typer.Exit(2)
    kept = on_catalogue("tenants", lambda session: set_retention(session, tenant, days))
    typer.echo(f"tenant {kept.tenant}: evidence kept " + (f"{days} days" if days else "forever"))
