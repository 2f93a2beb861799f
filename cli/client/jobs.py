"""`lethe jobs list|get|watch|cancel`."""

from typing import Annotated, Any, Literal

import typer

from cli.client.http import LetheClient, client
from cli.client.outcome import job_exit_code, show_job_outcome
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
    stderr,
    stdout,
)
from cli.client.watch import watch
from cli.errors import CliError
from cli.exit_codes import ExitCode

app = typer.Typer(help="List, read, watch and cancel jobs.", no_args_is_help=True)

COLUMNS: list[Column] = [
    ("id", field("id")),
    ("kind", field("kind")),
    ("status", field("status")),
    ("stage", field("stage")),
    ("progress", lambda job: f"{100 * job['progress']:.0f}%"),
    ("created", created),
]
StreamOption = Annotated[
    bool, typer.Option("--stream/--no-stream", help="SSE stream, or polled JSON pages of events (behind a proxy)")
]


@app.command("list", help="Your tenant's jobs, newest first.")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, typer.Option(help="only these")
    ] = None,
    kind: Annotated[Literal["forget", "audit"] | None, typer.Option(help="only these")] = None,
    limit: LimitOption = 50,
    cursor: CursorOption = None,
    created_after: CreatedAfterOption = None,
    created_before: CreatedBeforeOption = None,
    follow: AllOption = False,
    as_json: JsonOption = False,
) -> None:
    params = page_params(limit, cursor, created_after, created_before, status=status, kind=kind)
    with client(ctx) as lethe:
        items, next_cursor = lethe.listing("/v1/jobs", params, follow)
    show_page(items, next_cursor, COLUMNS, as_json, "jobs")


@app.command(help="A job: status, metrics with intervals, the forgetting verdict (exit 0 whatever its state).")
def get(ctx: typer.Context, job_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        job = lethe.get_json(f"/v1/jobs/{job_id}")
    if as_json:
        print_json(job)
    elif job["status"] in ("succeeded", "failed", "cancelled"):
        show_job_outcome(job, stdout())
    else:
        line = f"job {job['id']} {job['status']}: {job['stage']}, {100 * job['progress']:.0f}%"
        stdout().print(line, highlight=False)


def watch_and_report(lethe: LetheClient, job: dict[str, Any], stream: bool, as_json: bool) -> ExitCode:
    """Watch a job to its end on stderr, then its outcome on stdout; the exit status it means."""
    ended = watch(lethe, job, stderr(), stream=stream)
    if as_json:
        print_json(ended)
    else:
        show_job_outcome(ended, stdout())
    if ended.get("kind") == "audit" and ended["status"] == "succeeded" and ended.get("audit_ids"):
        from cli.client.audits import report_audit

        return report_audit(lethe, str(ended["audit_ids"][0]), as_json)
    return job_exit_code(ended)


@app.command(
    "watch",
    help="Follow a job to its end: a bar per stage, the forgetting curve, then the metrics table. Exit 0, or 3 "
    "failed/cancelled, 4 target not reached (an audit job: 5 shallow, 6 inconclusive).",
)
def watch_job(ctx: typer.Context, job_id: str, stream: StreamOption = True, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        code = watch_and_report(lethe, lethe.get_json(f"/v1/jobs/{job_id}"), stream, as_json)
    raise typer.Exit(code)


@app.command(help="Cancel a queued or running job (the API answers 409 when it has already ended).")
def cancel(ctx: typer.Context, job_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        job = lethe.post_json(f"/v1/jobs/{job_id}/cancel")
    if as_json:
        print_json(job)
    elif job["status"] != "cancelled":
        raise CliError(f"job {job_id} is {job['status']}, not cancelled", ExitCode.API_ERROR)
    else:
        stdout().print(f"job {job_id} cancelled", highlight=False)


@app.command(
    help="Delete an ended job with its events, metrics, evidence and adapter (an audit job: its audit); the API "
    "answers 409 while it is queued or running. Prints the signed deletion receipt."
)
def delete(ctx: typer.Context, job_id: str, as_json: JsonOption = False) -> None:
    with client(ctx) as lethe:
        signed = lethe.request("DELETE", f"/v1/jobs/{job_id}").json()
    show_receipt(f"job {job_id}", signed, as_json)
