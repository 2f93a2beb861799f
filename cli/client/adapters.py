"""`lethe adapters list|get|download|delete`."""

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from cli.client.http import client
from cli.client.output import (
    AllOption,
    Column,
    CreatedAfterOption,
    CreatedBeforeOption,
    CursorOption,
    JsonOption,
    LimitOption,
    field,
    page_params,
    show_page,
    show_receipt,
    show_record,
    stderr,
    stdout,
)
from cli.errors import CliError
from cli.exit_codes import ExitCode

app = typer.Typer(help="Read, download and delete the adapters forget jobs produced.", no_args_is_help=True)

COLUMNS: list[Column] = [
    ("id", field("id")),
    ("job", field("job_id")),
    ("base model", field("base_model")),
    ("bytes", field("size_bytes")),
    ("parent", field("parent_adapter_id")),
]
FIELDS: list[Column] = [*COLUMNS, ("sha256", field("sha256")), ("lineage", field("lineage"))]
CHUNK = 1 << 20


@app.command("list", help="Your tenant's adapters, newest first.")
def list_adapters(
    ctx: typer.Context,
    base_model: Annotated[str | None, typer.Option(help="only adapters on this base model")] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    created_after: CreatedAfterOption = None,
    created_before: CreatedBeforeOption = None,
    follow: AllOption = False,
    as_json: JsonOption = False,
) -> None:
    params = page_params(limit, cursor, created_after, created_before, base_model=base_model)
    with client(ctx) as lethe:
        items, next_cursor = lethe.listing("/v1/adapters", params, follow)
    show_page(items, next_cursor, COLUMNS, as_json, "adapters")


@app.command(help="An adapter's provenance, checksum and lineage.")
def get(ctx: typer.Context, adapter_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        show_record(lethe.get_json(f"/v1/adapters/{adapter_id}"), FIELDS, as_json)


def _filename(disposition: str | None, fallback: str) -> str:
    """The server's `filename=` without any directory part, else `fallback`."""
    match = re.search(r'filename="?([^";]+)"?', disposition or "")
    name = Path(match.group(1)).name if match else ""
    return name if name not in ("", ".", "..") else fallback


@app.command(
    help="Stream the adapter's tar.gz to disk and check it against the server's sha256 (exit 1 and nothing kept "
    "when it differs)."
)
def download(
    ctx: typer.Context,
    adapter_id: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="the file (default: the server's name, here)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    with client(ctx) as lethe, lethe.stream("GET", f"/v1/adapters/{adapter_id}/download") as response:
        target = output or Path(_filename(response.headers.get("Content-Disposition"), f"{adapter_id}.tar.gz"))
        if target.exists() and not force:
            raise CliError(f"{target} exists (--force to overwrite)", ExitCode.USAGE)
        expected = response.headers.get("X-Checksum-SHA256")
        if not expected:
            raise CliError("the server sent no X-Checksum-SHA256: the download cannot be checked", ExitCode.API_ERROR)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        size = int(response.headers.get("Content-Length") or 0) or None
        console = stderr()
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        try:
            bar = Progress(*columns, console=console, disable=not console.is_terminal)
            with partial.open("wb") as sink, bar:
                task = bar.add_task("download", total=size)
                for chunk in response.iter_bytes(CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
            if digest.hexdigest() != expected.lower():
                raise CliError(
                    f"adapter {adapter_id}: sha256 {digest.hexdigest()} != {expected} from the server; nothing kept",
                    ExitCode.INVALID,
                )
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    stdout().print(f"{target} (sha256 {expected}, checked)", highlight=False)


@app.command(help="Delete an adapter and its stored archive; prints the signed deletion receipt.")
def delete(ctx: typer.Context, adapter_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        signed = lethe.request("DELETE", f"/v1/adapters/{adapter_id}").json()
    show_receipt(f"adapter {adapter_id}", signed, as_json)
