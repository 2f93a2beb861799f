"""The client commands' own parts, without a server: profiles, error rendering, the event view and its drawing,
the SSE resume, and that the command starts without the ML stack or the service's imports."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.client.config import DEFAULT_URL, resolve
from cli.client.http import LetheClient, api_error
from cli.client.outcome import audit_exit_code, job_exit_code
from cli.client.watch import JobView, StageSpan, curve_plot, sparkline, sse_events, stage_bar
from cli.errors import CliError
from cli.exit_codes import ExitCode
from cli.main import main
from tests.test_layout import ML_STACK

ROOT = Path(__file__).resolve().parents[2]
PROFILES = """
[profiles.default]
url = "http://default.example:8000/"
api_key = "default-key"

[profiles.prod]
url = "https://prod.example"
api_key = "prod-key"
timeout_s = 5
"""


def env_with(tmp_path: Path, text: str | None, **variables: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    return {"LETHE_CONFIG": str(path), **variables}


def test_a_named_profile_wins_then_the_environment_then_the_default_profile(tmp_path: Path) -> None:
    env = env_with(tmp_path, PROFILES, LETHE_URL="http://env.example", LETHE_API_KEY="env-key")
    prod = resolve("prod", env)
    assert (prod.url, prod.api_key, prod.timeout_s) == ("https://prod.example", "prod-key", 5.0)
    from_env = resolve(None, env)
    assert (from_env.url, from_env.api_key, from_env.source) == (
        "http://env.example",
        "env-key",
        "LETHE_URL / LETHE_API_KEY",
    )
    # Without the variables the default profile applies (its trailing slash dropped); a variable fills one setting.
    default = resolve(None, env_with(tmp_path, PROFILES, LETHE_API_KEY="env-key"))
    assert (default.url, default.api_key) == ("http://default.example:8000", "env-key")


def test_without_a_file_the_environment_or_the_local_server(tmp_path: Path) -> None:
    nothing = resolve(None, env_with(tmp_path, None))
    assert (nothing.url, nothing.api_key, nothing.timeout_s) == (DEFAULT_URL, None, 30.0)
    # XDG_CONFIG_HOME is where the file is looked for when LETHE_CONFIG is not set.
    (tmp_path / "lethe").mkdir()
    (tmp_path / "lethe" / "config.toml").write_text(PROFILES)
    assert resolve("prod", {"XDG_CONFIG_HOME": str(tmp_path)}).api_key == "prod-key"


@pytest.mark.parametrize(
    ("text", "profile", "message"),
    [
        (PROFILES, "staging", "no profile 'staging' in {path} (profiles there: default, prod)"),
        ("[profiles.x\n", None, "cannot read the config file {path}: "),
        ("[profiles.x]\nurl = 3\n", None, "{path}: [profiles.x] url must be a string"),
        ("[profiles.x]\napi-key = 'k'\n", None, "{path}: [profiles.x] has unknown settings ['api-key']"),
        ("[profiles.x]\ntimeout_s = 'slow'\n", None, "{path}: [profiles.x] timeout_s must be a number of seconds"),
    ],
)
def test_a_wrong_profile_file_is_a_usage_error_naming_it(tmp_path: Path, text: str, profile: str, message: str) -> None:
    env = env_with(tmp_path, text)
    with pytest.raises(CliError) as raised:
        resolve(profile, env)
    assert raised.value.exit_code == ExitCode.USAGE
    assert raised.value.message.startswith(message.format(path=env["LETHE_CONFIG"]))


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://lethe.test/v1/forget-requests")
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_the_api_error_becomes_one_line_with_its_code_and_detail() -> None:
    error = api_error(answer(422, {"error": "invalid_input", "detail": "method: unknown method 'nope'"}))
    assert error.exit_code == ExitCode.API_ERROR
    assert error.message == "POST /v1/forget-requests: 422 invalid_input: method: unknown method 'nope'"
    assert api_error(answer(401, {"error": "unauthorized", "detail": "no key"})).message.endswith(
        "401 unauthorized: no key (set LETHE_API_KEY, or api_key in the profile)"
    )
    limited = api_error(answer(429, {"error": "rate_limited", "detail": "slow down"}, {"Retry-After": "3"}))
    assert limited.message.endswith("(retry after 3 s)")
    plain = httpx.Response(502, text="<html>bad gateway</html>", request=httpx.Request("GET", "http://x/v1/jobs"))
    assert api_error(plain).message == "GET /v1/jobs: 502 Bad Gateway: <html>bad gateway</html>"


def test_a_client_command_renders_refusals_and_unreachable_servers(tmp_path: Path, capsys, monkeypatch) -> None:
    for name, value in env_with(tmp_path, None, LETHE_API_KEY="k", LETHE_URL="http://127.0.0.1:9").items():
        monkeypatch.setenv(name, value)
    assert main(["jobs", "list"]) == ExitCode.UNREACHABLE
    assert capsys.readouterr().err.startswith(
        "lethe: cannot reach Lethe at http://127.0.0.1:9 (LETHE_URL / LETHE_API_KEY)"
    )
    monkeypatch.delenv("LETHE_API_KEY")
    assert main(["jobs", "list"]) == ExitCode.USAGE
    assert "no API key for http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["--profile", "nope", "jobs", "list"]) == ExitCode.USAGE
    assert "no profile 'nope'" in capsys.readouterr().err
    assert main(["jobs", "frobnicate"]) == ExitCode.USAGE  # click's usage error keeps its code


def progress(seq: int, stage: str, fraction: float, point: tuple[int, float] | None = None) -> dict:
    curve = (
        None if point is None else {"split": "forget_train", "name": "accuracy", "step": point[0], "value": point[1]}
    )
    created = f"2026-11-30T12:00:{seq:02d}+00:00"
    return {
        "seq": seq,
        "type": "progress",
        "created_at": created,
        "data": {"stage": stage, "fraction": fraction, "curve": curve},
    }


def test_events_drive_the_stages_and_the_curve() -> None:
    view = JobView(job_id="j", kind="forget")
    events = [
        {"seq": 1, "type": "queued", "data": {}},
        {"seq": 2, "type": "running", "data": {}},
        progress(3, "finetuning", 0.0),
        progress(4, "finetuning", 0.3),
        # The fraction is the whole job's: forgetting takes it from 0.5 on.
        progress(5, "forgetting", 0.5),
        *(progress(6 + step, "forgetting", 0.5 + step / 10, (step, 1 - step / 4)) for step in range(1, 5)),
        # A replayed point (same step) is not drawn twice.
        progress(11, "forgetting", 0.9, (4, 0.0)),
        progress(12, "evaluating", 0.95),
        {"seq": 13, "type": "succeeded", "created_at": "2026-11-30T12:00:20+00:00", "data": {}},
    ]
    for event in events:
        view.apply(event)
    assert view.status == "succeeded" and view.ended and view.last_seq == 13 and view.fraction == 1.0
    spans = [(stage, span.start, span.end, span.ended_at - span.began_at) for stage, span in view.stages]
    assert spans == [("finetuning", 0.0, 0.5, 2.0), ("forgetting", 0.5, 0.95, 7.0), ("evaluating", 0.95, 1.0, 8.0)]
    assert view.curves["forget_train"].points == [(1, 0.75), (2, 0.5), (3, 0.25), (4, 0.0)]
    # Each stage's bar is its stretch of the whole job; the stage under way runs up to where the job stands.
    assert stage_bar(view.stages[1][1], 1.0, 20).plain == "─" * 10 + "━" * 9 + "─"
    assert stage_bar(StageSpan(start=0.5), 0.75, 8).plain == "────━━──"
    assert stage_bar(StageSpan(start=0.5), 0.5, 8).plain == "────━───"  # just begun: one cell


def test_the_curve_plot_is_columns_of_eighths() -> None:
    points = [(step, value) for step, value in enumerate([0.0, 0.25, 0.5, 1.0])]
    rows = curve_plot(points, width=10, height=2)
    # 2 rows = 16 eighths over [0, 1]: 0, 4, 8 and 16 eighths, the top row first.
    assert rows == ["   █", " ▄██"]
    assert sparkline(points, 10) == "▁▃▅█"
    many = [(step, step / 99) for step in range(100)]
    assert len(curve_plot(many, width=20)[0]) == 20 and sparkline(many, 20)[-1] == "█"


def test_exit_codes_of_jobs_and_audits() -> None:
    forgetting = {"target_reached": False}
    assert job_exit_code({"status": "succeeded", "forgetting": None}) == ExitCode.SUCCEEDED
    assert job_exit_code({"status": "succeeded", "forgetting": forgetting}) == ExitCode.TARGET_NOT_REACHED
    assert job_exit_code({"status": "cancelled"}) == job_exit_code({"status": "failed"}) == ExitCode.JOB_FAILED
    assert audit_exit_code({"status": "succeeded", "verdict": "shallow"}) == ExitCode.SHALLOW
    assert audit_exit_code({"status": "succeeded", "verdict": "inconclusive"}) == ExitCode.INCONCLUSIVE
    assert audit_exit_code({"status": "running", "verdict": None}) == ExitCode.PENDING
    assert len({int(code) for code in ExitCode}) == len(ExitCode)


class DroppingStream(httpx.SyncByteStream):
    """An SSE body that sends `events`, then fails like a dropped connection (or ends, when `drop` is false)."""

    def __init__(self, events: list[dict], drop: bool) -> None:
        self.events, self.drop = events, drop

    def __iter__(self) -> Iterator[bytes]:
        yield b": keep-alive\n\n"
        for event in self.events:
            yield f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
        if self.drop:
            raise httpx.ReadError("connection reset")


def test_a_dropped_stream_resumes_after_the_last_event_it_delivered() -> None:
    events = [{"seq": seq, "type": "progress", "data": {"stage": "forget", "fraction": seq / 5}} for seq in (1, 2, 3)]
    events.append({"seq": 4, "type": "succeeded", "data": {}})
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.headers["Last-Event-ID"])
        asked.append(request.headers["Last-Event-ID"])
        rest = [e for e in events if e["seq"] > after]
        # The first connection drops after two events, the second ends early (a restarted server), the third ends.
        sent, drop = {0: (rest[:2], True), 1: (rest[:1], False)}.get(len(asked) - 1, (rest, False))
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=DroppingStream(sent, drop))

    lethe = LetheClient(
        resolve(None, {"LETHE_URL": "http://lethe.test", "LETHE_CONFIG": "/nonexistent"}),
        transport=httpx.MockTransport(handler),
    )
    received = list(sse_events(lethe, "job", 0, sleep=lambda _s: None))
    assert [e["seq"] for e in received] == [1, 2, 3, 4]
    assert asked == ["0", "2", "3"]


def test_help_and_a_client_command_load_no_ml_stack_nor_the_service() -> None:
    code = (
        "import sys\n"
        "from cli.main import main\n"
        "assert main(['--help']) == 0\n"
        "assert main(['jobs', 'list']) == 8\n"  # nothing listens on port 9
        f"heavy = {sorted(ML_STACK | {'sqlalchemy', 'fastapi', 'celery', 'uvicorn', 'api', 'models', 'worker'})!r}\n"
        "loaded = [name for name in heavy if name in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "LETHE_URL": "http://127.0.0.1:9",
        "LETHE_API_KEY": "k",
        "LETHE_CONFIG": "/nonexistent/config.toml",
    }
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def job_body(status: str, stage: str, fraction: float, curves: list[dict] | None = None) -> dict:
    return {
        "id": "job-1",
        "kind": "forget",
        "status": status,
        "stage": stage,
        "progress": fraction,
        "curves": curves or [],
    }


def test_without_the_events_route_the_job_itself_is_polled(capsys) -> None:
    point = {"split": "forget_train", "name": "accuracy", "step": 1, "value": 0.5}
    states = iter([job_body("running", "forgetting", 0.6, [point]), job_body("succeeded", "succeeded", 1.0, [point])])
    final = job_body("succeeded", "succeeded", 1.0, [point])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):  # a Lethe before the events route
            return httpx.Response(404, json={"error": "not_found", "detail": "Not Found"})
        return httpx.Response(200, json=next(states, final))

    from rich.console import Console

    from cli.client.watch import watch

    lethe = LetheClient(
        resolve(None, {"LETHE_URL": "http://lethe.test", "LETHE_CONFIG": "/nonexistent"}),
        transport=httpx.MockTransport(handler),
    )
    ended = watch(lethe, job_body("queued", "queued", 0.0), Console(file=sys.stderr), poll_s=0)
    assert ended["status"] == "succeeded"
    # No terminal: a line per change of status or stage.
    assert capsys.readouterr().err.splitlines() == [
        "job job-1: queued",
        "job job-1: running stage forgetting",
        "job job-1: succeeded stage forgetting",
    ]


def test_no_stream_reads_the_events_as_json_pages() -> None:
    # Events 1, then an empty page (the job is quiet: wait and ask again after 1), then its end.
    answers = iter(
        [
            {"items": [{"seq": 1, "type": "running", "data": {}}], "next_after": 1, "terminal": False},
            {"items": [], "next_after": 1, "terminal": False},
            {"items": [{"seq": 2, "type": "succeeded", "data": {}}], "next_after": 2, "terminal": True},
        ]
    )
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert "text/event-stream" not in request.headers.get("Accept", "")
        asked.append(request.url.params["after"])
        return httpx.Response(200, json=next(answers))

    from cli.client.watch import page_events

    lethe = LetheClient(
        resolve(None, {"LETHE_URL": "http://lethe.test", "LETHE_CONFIG": "/nonexistent"}),
        transport=httpx.MockTransport(handler),
    )
    received = list(page_events(lethe, "job-1", 0, sleep=lambda _s: None))
    assert [e["seq"] for e in received] == [1, 2] and asked == ["0", "1", "1"]
