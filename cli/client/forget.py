"""`lethe forget submit FILE [--watch]`."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.client.http import client
from cli.client.jobs import StreamOption, watch_and_report
from cli.client.output import JsonOption, print_json, stdout
from cli.errors import CliError
from cli.exit_codes import ExitCode

app = typer.Typer(help="Ask for a base model to forget a dataset.", no_args_is_help=True)


def read_request(file: Path) -> dict[str, object]:
    """The request body from a JSON file (`-`: standard input); a usage error naming the file when it is not one."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text("utf-8")
        body = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"cannot read {file} as JSON: {exc}", ExitCode.USAGE) from exc
    if not isinstance(body, dict):
        raise CliError(f"{file}: a request is a JSON object, not {type(body).__name__}", ExitCode.USAGE)
    return body


@app.command(
    help="Submit a forget request: FILE is the JSON body of POST /v1/forget-requests (`-` reads stdin). With "
    "--watch, follow the job and exit 0 (succeeded), 3 (failed or cancelled) or 4 (target not reached)."
)
def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the request, JSON (README: forget requests)")],
    watch: Annotated[bool, typer.Option("--watch", help="follow the job to its end")] = False,
    stream: StreamOption = True,
    as_json: JsonOption = False,
) -> None:
    body = read_request(file)
    with client(ctx) as lethe:
        accepted = lethe.post_json("/v1/forget-requests", json=body)
        job_id = str(accepted["job_id"])
        if not watch:
            if as_json:
                print_json(accepted)
            else:
                stdout().print(f"job {job_id} {accepted['status']} (lethe jobs watch {job_id})", highlight=False)
            return
        code = watch_and_report(lethe, lethe.get_json(f"/v1/jobs/{job_id}"), stream, as_json)
    raise typer.Exit(code)
