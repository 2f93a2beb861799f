"""The `lethe` command: serve (embedded default), worker, migrate, base-models, api-keys, verify-report."""

import argparse
import signal
import sys
from pathlib import Path

from cli.embedded_worker import EmbeddedWorker, die_with_parent
from lethe.settings import get_settings


def _ensure_embedded_catalogue() -> None:
    """The embedded default has no migrate step of its own: migrate the SQLite catalogue on first use."""
    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        from models.migrate import upgrade

        upgrade(settings.database_url)


def _migrate(_args: argparse.Namespace) -> int:
    from models.migrate import upgrade

    upgrade(get_settings().database_url)
    print("catalogue migrated to head")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _ensure_embedded_catalogue()
    worker = None
    # The embedded default has no separate worker service: run one beside the API, for as long as the API runs.
    if settings.embedded_broker and not args.no_worker:
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
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", log_config=None)
    finally:
        if worker is not None:
            worker.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    die_with_parent()  # a no-op unless `lethe serve` started this worker beside it
    from worker.startup import check_worker_devices

    # Before Celery's banner: a worker that must not run (LETHE_REQUIRE_GPU without CUDA) exits with EX_CONFIG.
    check_worker_devices(get_settings())
    from worker.tasks import celery_app

    # One job at a time per process: a job already uses every core (or the whole GPU).
    celery_app.worker_main(
        ["worker", "--pool=solo", f"--loglevel={args.loglevel}", "--without-gossip", "--without-mingle"]
    )
    return 0


def _base_models_add(args: argparse.Namespace) -> int:
    from api.services.base_models import add_base_model
    from lethe.base_model_sources import BaseModelSourceError
    from lethe.hub import HubOptions
    from models.db import session_scope

    source = args.source if ":" in args.source else f"path:{Path(args.source).resolve()}"
    settings = get_settings()
    _ensure_embedded_catalogue()
    try:
        with session_scope(settings.database_url) as session:
            base_model = add_base_model(
                session, HubOptions.from_settings(settings), args.name, source, args.description
            )
            registered, digest = base_model.source, base_model.weights_sha256
    except BaseModelSourceError as exc:
        print(f"lethe base-models add: {exc}", file=sys.stderr)
        return 2
    print(f"registered base model {args.name} -> {registered}" + (f" (weights sha256 {digest})" if digest else ""))
    return 0


def _verify_report(args: argparse.Namespace) -> int:
    from cli.verify_report import verify_report

    return verify_report(Path(args.file), args.key_file, args.key_url, args.html)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lethe", description="Unlearning-as-a-service for language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API (and, in the embedded default, a worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(run=_worker)

    migrate = commands.add_parser("migrate", help="apply the catalogue migrations and exit")
    migrate.set_defaults(run=_migrate)

    base_models = commands.add_parser("base-models", help="manage base models").add_subparsers(
        dest="action", required=True
    )
    add = base_models.add_parser(
        "add", help="register a base model: a hub repository or a local safetensors checkpoint (checked first)"
    )
    add.add_argument("name")
    add.add_argument(
        "source",
        help="hf:org/name@revision (pinned to its commit; LETHE_HF_ENDPOINT, LETHE_HF_OFFLINE apply), a directory "
        "(or path:/abs/dir), or bundled:<id>",
    )
    add.add_argument("--description", default="")
    add.set_defaults(run=_base_models_add)

    # Listed here for `lethe --help`; `main` hands `lethe api-keys ...` to its typer app (cli/api_keys.py).
    commands.add_parser("api-keys", help="manage API keys: create, list, revoke, rotate", add_help=False)

    verify_report = commands.add_parser(
        "verify-report",
        help="check a signed audit report (or deletion receipt) with the server's published public keys: exit 0 "
        "valid, 1 invalid, 2 unusable input",
    )
    verify_report.add_argument("file", help="the report JSON (GET /v1/audits/{id}/report)")
    keys = verify_report.add_mutually_exclusive_group(required=True)
    keys.add_argument(
        "--key-file", type=Path, help="the JSON of GET /v1/signing-keys saved to disk (or a PEM public key): offline"
    )
    keys.add_argument("--key-url", help="the server's /v1/signing-keys URL (https, or http on loopback only)")
    verify_report.add_argument("--html", type=Path, help="the report's HTML page: check it is the one the JSON signed")
    verify_report.set_defaults(run=_verify_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["api-keys"]:
        from cli.api_keys import app as api_keys_app

        api_keys_app(argv[1:], prog_name="lethe api-keys")  # exits with the command's status
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
