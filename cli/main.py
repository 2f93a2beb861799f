"""The `lethe` command: the admin commands of an installation (serve, worker, migrate, base-models, api-keys,
verify-report) and the client commands that talk HTTP to any Lethe (datasets, forget, jobs, adapters, audits).

Every heavy import (uvicorn, the API, Celery, the catalogue) sits inside the command that needs it: a client
command or `lethe --help` loads typer, rich and httpx only, and starts fast.
"""

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli import api_keys, signing_keys, tenants
from cli.catalogue import ensure_embedded_catalogue
from cli.client import adapters, audits, datasets, forget, jobs
from cli.client.config import ProfileOption
from cli.errors import CliError, render_error
from cli.exit_codes import EXIT_CODES_HELP, ExitCode

app = typer.Typer(
    name="lethe",
    help="Unlearning-as-a-service for language models.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    # A crash prints Python's own traceback, as before typer: no boxed source, and never the locals (an API key).
    pretty_exceptions_enable=False,
)


@app.callback()
def root(ctx: typer.Context, profile: ProfileOption = None) -> None:
    """Unlearning-as-a-service for language models."""
    ctx.obj = profile


@app.command(help="Apply the catalogue migrations and exit.")
def migrate() -> None:
    from lethe.settings import get_settings
    from models.migrate import upgrade

    upgrade(get_settings().database_url)
    print("catalogue migrated to head")


@app.command(help="Run the API (and, in the embedded default, a worker).")
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="do not start the embedded worker")] = False,
) -> None:
    import uvicorn

    from api.app import create_app
    from cli.embedded_worker import EmbeddedWorker
    from lethe.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_embedded_catalogue()
    worker = None
    # The embedded default has no separate worker service: run one beside the API, for as long as the API runs.
    if settings.embedded_broker and not no_worker:
        if settings.require_gpu:
            # Refuse here rather than serve an API whose worker will never start (it would say the same and exit).
            from worker.startup import check_worker_devices

            check_worker_devices(settings)
        worker = EmbeddedWorker([sys.executable, "-m", "cli.main", "worker"])
        worker.start()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it found installed:
    # with Python's default handler the process would die there and the `finally` below would never stop the
    # worker. This handler turns that second SIGTERM into SystemExit (status 128 + 15, as a death by the signal).
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        # Open event streams (GET /v1/jobs/{id}/events) never end on their own: a graceful shutdown waits for them
        # 5 s at most, then closes them (clients resume with Last-Event-ID); log_config None: structlog's format.
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="info",
            log_config=None,
            timeout_graceful_shutdown=5,
        )
    finally:
        if worker is not None:
            worker.stop()


@app.command(help="Run a Celery worker.")
def worker(loglevel: str = "INFO") -> None:
    from cli.embedded_worker import EX_CONFIG, die_with_parent

    die_with_parent()  # a no-op unless `lethe serve` started this worker beside it
    from worker.allocator import AllocatorError, exec_with_allocator

    # Before torch is imported: once, the process re-executes itself with jemalloc preloaded (worker/allocator.py).
    try:
        exec_with_allocator([sys.executable, "-m", "cli.main", "worker", f"--loglevel={loglevel}"])
    except AllocatorError as exc:
        print(f"lethe worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG) from None
    from lethe.settings import get_settings
    from worker.startup import check_worker_devices

    # Before Celery's banner: a worker that must not run (LETHE_REQUIRE_GPU without CUDA) exits with EX_CONFIG.
    check_worker_devices(get_settings())
    from worker.tasks import celery_app

    # One job at a time per process: a job already uses every core (or the whole GPU).
    celery_app.worker_main(["worker", "--pool=solo", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"])


base_models_app = typer.Typer(help="Manage base models.", no_args_is_help=True)


@base_models_app.command(
    "add", help="Register a base model: a hub repository or a local safetensors checkpoint (checked first)."
)
def base_models_add(
    name: str,
    source: Annotated[
        str,
        typer.Argument(
            help="hf:org/name@revision (pinned to its commit; LETHE_HF_ENDPOINT, LETHE_HF_OFFLINE apply), a "
            "directory (or path:/abs/dir), or bundled:<id>"
        ),
    ],
    description: str = "",
) -> None:
    from api.services.base_models import add_base_model
    from lethe.base_model_sources import BaseModelSourceError
    from lethe.hub import HubOptions
    from lethe.settings import get_settings
    from models.db import session_scope

    source = source if ":" in source else f"path:{Path(source).resolve()}"
    settings = get_settings()
    ensure_embedded_catalogue()
    try:
        with session_scope(settings.database_url) as session:
            base_model = add_base_model(session, HubOptions.from_settings(settings), name, source, description)
            registered, digest = base_model.source, base_model.weights_sha256
    except BaseModelSourceError as exc:
        print(f"lethe base-models add: {exc}", file=sys.stderr)
        raise typer.Exit(ExitCode.USAGE) from exc
    print(f"registered base model {name} -> {registered}" + (f" (weights sha256 {digest})" if digest else ""))


@app.command(
    "verify-report",
    help="Check a signed audit report (or deletion receipt) with the server's published public keys: exit 0 valid, "
    "1 invalid, 2 unusable input. Never creates a key.",
)
def verify_report(
    file: Annotated[Path, typer.Argument(help="the report JSON (GET /v1/audits/{id}/report)")],
    key_file: Annotated[
        Path | None,
        typer.Option(help="the JSON of GET /v1/signing-keys saved to disk (or a PEM public key): offline"),
    ] = None,
    key_url: Annotated[
        str | None, typer.Option(help="the server's /v1/signing-keys URL (https, or http on loopback only)")
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="the report's HTML page: check it is the one the JSON signed")
    ] = None,
) -> None:
    from cli.verify_report import verify_report as check

    if (key_file is None) == (key_url is None):
        print("lethe verify-report: give exactly one of --key-file and --key-url", file=sys.stderr)
        raise typer.Exit(ExitCode.USAGE)
    raise typer.Exit(check(file, key_file, key_url, html))


app.add_typer(base_models_app, name="base-models")
app.add_typer(api_keys.app, name="api-keys")
app.add_typer(signing_keys.app, name="signing-keys")
app.add_typer(tenants.app, name="tenants")
app.add_typer(datasets.app, name="datasets")
app.add_typer(forget.app, name="forget")
app.add_typer(jobs.app, name="jobs")
app.add_typer(adapters.app, name="adapters")
app.add_typer(audits.app, name="audits")


def main(argv: list[str] | None = None) -> int:
    """The console entry point: the command's exit status (a client error is one line on stderr, no traceback)."""
    try:
        app(args=argv, prog_name="lethe")
    except SystemExit as exited:
        if exited.code is None or isinstance(exited.code, int):
            return exited.code or 0
        print(exited.code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits with 1
        return 1
    except CliError as error:
        render_error(error)
        return int(error.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
