"""`lethe audits submit|list|get|report`."""

import webbrowser
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from cli.client.forget import read_request
from cli.client.http import LetheClient, client
from cli.client.jobs import StreamOption, watch_and_report
from cli.client.outcome import audit_exit_code, show_audit
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
    print_json,
    show_page,
    show_receipt,
    stdout,
)
from cli.errors import CliError
from cli.exit_codes import ExitCode

app = typer.Typer(
    help="Recovery-attack audits of adapters: submit, read, fetch the signed report.", no_args_is_help=True
)

COLUMNS: list[Column] = [
    ("id", field("id")),
    ("adapter", field("adapter_id")),
    ("status", field("status")),
    ("verdict", field("verdict")),
    ("created", created),
]
VERDICT_HELP = "exit 0 robust, 5 shallow, 6 inconclusive, 3 failed or cancelled"


def _thresholds(pairs: list[str]) -> dict[str, float]:
    thresholds = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            thresholds[name.strip()] = float(value)
        except ValueError as exc:
            raise CliError(f"--threshold {pair!r}: expected NAME=NUMBER, e.g. recovery=0.25", ExitCode.USAGE) from exc
    return thresholds


def report_audit(lethe: LetheClient, audit_id: str, as_json: bool) -> ExitCode:
    """Print an audit (its verdict table, or its JSON); the exit status its verdict means."""
    audit = lethe.get_json(f"/v1/audits/{audit_id}")
    if as_json:
        print_json(audit)
    else:
        show_audit(audit, stdout())
    return audit_exit_code(audit)


@app.command(
    help=f"Audit an adapter (every attack that applies, unless --attack or --spec names them). With --watch, follow "
    f"the audit's job and {VERDICT_HELP}."
)
def submit(
    ctx: typer.Context,
    adapter_id: str,
    attack: Annotated[
        list[str] | None, typer.Option(help="an attack of GET /v1/attacks, default params; repeat")
    ] = None,
    threshold: Annotated[list[str] | None, typer.Option(help="NAME=NUMBER, e.g. recovery=0.25; repeat")] = None,
    spec: Annotated[
        Path | None, typer.Option(help="JSON {attacks: [{name, params}], thresholds: {...}} (`-`: stdin)")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="follow the audit to its verdict")] = False,
    stream: StreamOption = True,
    as_json: JsonOption = False,
) -> None:
    body: dict[str, Any] = read_request(spec) if spec is not None else {}
    if attack:
        body["attacks"] = [*(body.get("attacks") or []), *({"name": name} for name in attack)]
    if threshold:
        body["thresholds"] = {**(body.get("thresholds") or {}), **_thresholds(threshold)}
    body["adapter_id"] = adapter_id
    with client(ctx) as lethe:
        accepted = lethe.post_json("/v1/audits", json=body)
        if not watch:
            if as_json:
                print_json(accepted)
            else:
                stdout().print(
                    f"audit {accepted['audit_id']} {accepted['status']}, job {accepted['job_id']} "
                    f"(lethe jobs watch {accepted['job_id']})",
                    highlight=False,
                )
            return
        code = watch_and_report(lethe, lethe.get_json(f"/v1/jobs/{accepted['job_id']}"), stream, as_json)
    raise typer.Exit(code)


@app.command("list", help="Your tenant's audits, newest first.")
def list_audits(
    ctx: typer.Context,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, typer.Option(help="only these")
    ] = None,
    verdict: Annotated[Literal["robust", "shallow", "inconclusive"] | None, typer.Option(help="only these")] = None,
    adapter: Annotated[str | None, typer.Option(help="only audits of this adapter")] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    created_after: CreatedAfterOption = None,
    created_before: CreatedBeforeOption = None,
    follow: AllOption = False,
    as_json: JsonOption = False,
) -> None:
    params = page_params(
        limit, cursor, created_after, created_before, status=status, verdict=verdict, adapter_id=adapter
    )
    with client(ctx) as lethe:
        items, next_cursor = lethe.listing("/v1/audits", params, follow)
    show_page(items, next_cursor, COLUMNS, as_json, "audits")


@app.command(
    help=f"An audit: per attack the scores, recovery with its interval and verdict; {VERDICT_HELP}, 9 not finished yet."
)
def get(ctx: typer.Context, audit_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        code = report_audit(lethe, audit_id, as_json)
    raise typer.Exit(code)


@app.command(
    help="Save the audit's signed report (JSON: check it with `lethe verify-report`; or the HTML page), and with "
    "--open show it in the browser ($BROWSER chooses which)."
)
def report(
    ctx: typer.Context,
    audit_id: str,
    format: Annotated[Literal["json", "html"], typer.Option("--format", help="json or html")] = "json",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="the file (default: lethe-audit-ID.FORMAT, here)")
    ] = None,
    open_it: Annotated[bool, typer.Option("--open", help="open the saved file in the browser")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    target = output or Path(f"lethe-audit-{audit_id}.{format}")
    if target.exists() and not force:
        raise CliError(f"{target} exists (--force to overwrite)", ExitCode.USAGE)
    with client(ctx) as lethe:
        content = lethe.request("GET", f"/v1/audits/{audit_id}/report", params={"format": format}).content
    target.write_bytes(content)
    stdout().print(f"{target} ({len(content)} bytes)", highlight=False)
    if open_it and not webbrowser.open(target.resolve().as_uri()):
        raise CliError(f"no browser could open {target} (set BROWSER)", ExitCode.USAGE)


@app.command(help="Delete an audit and its reports; prints the signed deletion receipt.")
def delete(ctx: typer.Context, audit_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        signed = lethe.request("DELETE", f"/v1/audits/{audit_id}").json()
    show_receipt(f"audit {audit_id}", signed, as_json)
