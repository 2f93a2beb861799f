"""`lethe datasets upload|list|get|delete`."""

from pathlib import Path
from typing import Annotated, Literal

import typer

from cli.client.http import client
from cli.client.output import (
    AllOption,
    Column,
    CreatedAfterOption,
    CreatedBeforeOption,
    CursorOption,
    JsonOption,
    LimitOption,
    created,
    field,
    page_params,
    show_page,
    show_receipt,
    show_record,
)

app = typer.Typer(help="Upload, list, read and delete datasets (JSONL, one row per line).", no_args_is_help=True)

COLUMNS: list[Column] = [
    ("id", field("id")),
    ("name", field("name")),
    ("kind", field("kind")),
    ("rows", field("rows")),
    ("created", created),
]
FIELDS: list[Column] = [*COLUMNS, ("sha256", field("sha256"))]


@app.command(help="Upload a JSONL file; every row is checked by the server, and a bad file stores nothing.")
def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="the JSONL file")],
    kind: Annotated[Literal["choice", "qa", "text"], typer.Option(help="the rows' schema")],
    name: Annotated[str | None, typer.Option(help="the dataset's name (default: the file's stem)")] = None,
    as_json: JsonOption = False,
) -> None:
    with client(ctx) as lethe, file.open("rb") as content:
        dataset = lethe.post_json(
            "/v1/datasets",
            files={"file": (file.name, content, "application/x-ndjson")},
            data={"name": name or file.stem, "kind": kind},
        )
    show_record(dataset, FIELDS, as_json)


@app.command("list", help="The datasets of your tenant, newest first.")
def list_datasets(
    ctx: typer.Context,
    kind: Annotated[Literal["choice", "qa", "text"] | None, typer.Option(help="only these")] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    created_after: CreatedAfterOption = None,
    created_before: CreatedBeforeOption = None,
    follow: AllOption = False,
    as_json: JsonOption = False,
) -> None:
    params = page_params(limit, cursor, created_after, created_before, kind=kind)
    with client(ctx) as lethe:
        items, next_cursor = lethe.listing("/v1/datasets", params, follow)
    show_page(items, next_cursor, COLUMNS, as_json, "datasets")


@app.command(help="One dataset.")
def get(ctx: typer.Context, dataset_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        show_record(lethe.get_json(f"/v1/datasets/{dataset_id}"), FIELDS, as_json)


@app.command(help="Delete a dataset and its stored rows (409 while a queued or running job uses it).")
def delete(ctx: typer.Context, dataset_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        signed = lethe.request("DELETE", f"/v1/datasets/{dataset_id}").json()
    show_receipt(f"dataset {dataset_id}", signed, as_json)
