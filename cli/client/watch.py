"""Watching a job: its events (SSE, resumed with Last-Event-ID when the stream drops), a bar per stage, the
training curve drawn as it arrives, then the job's outcome (outcome.py) once it has ended.

Three sources, best first: the SSE stream of `GET /v1/jobs/{id}/events`; the same events as JSON pages when the
server will not stream (`--no-stream`, or a proxy that buffers); and, against a Lethe without the events route,
`GET /v1/jobs/{id}` polled (stage and whole-job progress only, curves from the job's `curves`).
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.client.http import LetheClient, api_error
from cli.errors import CliError
from cli.exit_codes import ExitCode

TERMINAL = ("succeeded", "failed", "cancelled")
# A dropped stream is resumed at once, then after 1, 2, 4... s; this many failures in a row and the watch gives up.
MAX_RECONNECTS = 8
POLL_INTERVAL_S = 1.0
# Blocks of one eighth of a cell: a column of the curve plot is full cells topped by one of these.
EIGHTHS = " ▁▂▃▄▅▆▇█"
PLOT_HEIGHT = 8


class NoEventsRoute(Exception):
    """The server has no events route (a Lethe before it): poll the job instead."""


Event = dict[str, Any]


# --- the view: what the screen shows, fed one event at a time -------------------------------------------------


@dataclass
class CurveSeries:
    name: str  # the split's primary metric: accuracy, answer_probability, text_probability
    points: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class StageSpan:
    """A stage's share of the job: the whole job's fraction done when it began and (once over) when it ended."""

    start: float
    end: float | None = None
    began_at: float = 0.0  # seconds since the epoch
    ended_at: float | None = None


@dataclass
class JobView:
    job_id: str
    kind: str
    status: str = "queued"
    stage: str | None = None
    fraction: float = 0.0  # of the whole job (the API's `progress`, non-decreasing within an attempt)
    # In the order they began; a stage may come again (evaluating before and after training): a row each time.
    stages: list[tuple[str, StageSpan]] = field(default_factory=list)
    curves: dict[str, CurveSeries] = field(default_factory=dict)  # split -> its curve
    last_seq: int = 0
    notes: list[str] = field(default_factory=list)  # requeued, audit requested...

    def _enter(self, stage: str, at: float) -> None:
        if stage == self.stage:
            return
        self._end(at)  # a stage that gave way to the next is over
        self.stage = stage
        self.stages.append((stage, StageSpan(start=self.fraction, began_at=at)))

    def _progress(self, stage: str | None, fraction: object, at: float) -> None:
        if isinstance(fraction, int | float):
            # Non-decreasing within an attempt; a requeued job starts again from its own report.
            self.fraction = min(1.0, max(0.0, float(fraction)))
        if stage:
            self._enter(stage, at)

    def add_point(self, split: str, name: str, step: int, value: float) -> None:
        series = self.curves.setdefault(split, CurveSeries(name))
        if not series.points or step > series.points[-1][0]:
            series.points.append((step, value))

    def _end(self, at: float) -> None:
        if self.stages and self.stages[-1][1].end is None:
            self.stages[-1][1].end, self.stages[-1][1].ended_at = self.fraction, at

    def apply(self, event: Event) -> None:
        kind, data = event.get("type", ""), event.get("data") or {}
        at = _timestamp(event.get("created_at"))
        if isinstance(event.get("seq"), int):
            self.last_seq = max(self.last_seq, event["seq"])
        if kind in ("queued", "running", "started"):
            self.status = "queued" if kind == "queued" else "running"
        elif kind in ("stage", "progress"):
            self.status = "running"
            self._progress(data.get("stage"), data.get("fraction"), at)
            curve = data.get("curve")
            if isinstance(curve, dict) and {"split", "name", "step", "value"} <= curve.keys():
                self.add_point(str(curve["split"]), str(curve["name"]), int(curve["step"]), float(curve["value"]))
        elif kind == "requeued":
            self.status, self.fraction = "queued", 0.0
            self._end(at)
            self.stage = None
            self.notes.append(f"requeued ({data.get('reason', 'no reason given')}), attempt {data.get('attempt')}")
        elif kind == "audit_requested":
            self.notes.append("audit requested")
        elif kind in TERMINAL:
            self.status = kind
            if kind == "succeeded":
                self.fraction = 1.0
            self._end(at)

    def apply_job(self, job: dict[str, Any]) -> None:
        """A polled `GET /v1/jobs/{id}`: its status, stage, whole-job progress and curve points."""
        at = time.time()
        self.status = job["status"]
        stage = job.get("stage") if job.get("stage") not in ("queued", *TERMINAL) else None
        self._progress(stage, job.get("progress"), at)
        if self.ended:
            self._end(at)
        for point in job.get("curves") or []:
            self.add_point(point["split"], point["name"], int(point["step"]), float(point["value"]))

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


def _timestamp(value: object) -> float:
    """An event's created_at as seconds since the epoch; now when it has none (a polled job)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return time.time()


# --- drawing ----------------------------------------------------------------------------------------------------


def _scale(values: list[float]) -> tuple[float, float]:
    """The y range: [0, 1] for scores that are proportions (accuracies, probabilities), else the values' own."""
    low, high = min(values), max(values)
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _resample(points: list[tuple[int, float]], width: int) -> list[float]:
    """At most `width` values, one per column: the latest point that falls in each column's share of the steps."""
    if len(points) <= width:
        return [value for _, value in points]
    return [points[min(len(points) - 1, ((column + 1) * len(points)) // width - 1)][1] for column in range(width)]


def sparkline(points: list[tuple[int, float]], width: int) -> str:
    values = _resample(points, width)
    low, high = _scale(values)
    return "".join(EIGHTHS[1 + round((v - low) / (high - low) * 7)] for v in values)


def curve_plot(points: list[tuple[int, float]], width: int, height: int = PLOT_HEIGHT) -> list[str]:
    """The curve as columns of blocks, `height` rows of `width` cells at most, top row first: each column's
    height is its value in eighths of a cell (height × 8 levels over the y range)."""
    values = _resample(points, width)
    low, high = _scale(values)
    eighths = [round((v - low) / (high - low) * height * 8) for v in values]
    rows = []
    for row in range(height - 1, -1, -1):  # the top row first
        floor = row * 8
        rows.append("".join(EIGHTHS[max(0, min(8, level - floor))] for level in eighths))
    return rows


def render_curves(view: JobView, width: int) -> RenderableType | None:
    """The primary split (forget_train) as a plot with its y range and steps; every other split as a sparkline."""
    if not view.curves:
        return None
    primary = "forget_train" if "forget_train" in view.curves else next(iter(view.curves))
    series = view.curves[primary]
    label_width = 6
    plot_width = max(10, min(60, width - label_width - 2))
    values = [value for _, value in series.points]
    low, high = _scale(values)
    lines = Text()
    lines.append(f"{primary} {series.name} during forgetting: {values[-1]:.3f} at step {series.points[-1][0]}\n")
    for index, row in enumerate(curve_plot(series.points, plot_width)):
        axis = f"{high:5.2f}" if index == 0 else (f"{low:5.2f}" if index == PLOT_HEIGHT - 1 else "")
        lines.append(f"{axis:>{label_width - 1}} │", style="dim")
        lines.append(row + "\n", style="cyan")
    first, last = series.points[0][0], series.points[-1][0]
    lines.append(f"{'':>{label_width - 1}} └ step {first} … {last}\n", style="dim")
    others = [(split, s) for split, s in view.curves.items() if split != primary and s.points]
    if others:
        name_width = min(28, max(len(split) for split, _ in others))
        spark_width = max(10, min(40, width - name_width - 12))
        for split, other in others:
            lines.append(f"{split[:name_width]:<{name_width}} ")
            lines.append(sparkline(other.points, spark_width), style="magenta")
            lines.append(f" {other.points[-1][1]:.3f}\n")
    lines.rstrip()
    return lines


def stage_bar(span: StageSpan, fraction: float, width: int) -> Text:
    """The stage's stretch of the whole job on a track of `width` cells: filled from where the job stood when the
    stage began to where it stands now (or stood when the stage ended), so the bars of the stages tile the job."""
    end = span.end if span.end is not None else fraction
    first, last = round(span.start * width), max(round(end * width), round(span.start * width))
    if last == first and (span.end is None or span.end > span.start):
        last = min(width, first + 1)  # a stage under way, or one that moved the job, shows at least one cell
    bar = Text("─" * first, style="dim")
    bar.append("━" * (last - first), style="green" if span.end is not None else "cyan")
    bar.append("─" * (width - last), style="dim")
    return bar


def _duration(seconds: float) -> str:
    minutes, secs = divmod(max(0, round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


class Screen:
    """The live display on stderr (stdout keeps the outcome, for pipes); lines instead when it is no terminal."""

    def __init__(self, view: JobView, console: Console) -> None:
        self.view = view
        self.console = console
        self.live: Live | None = None
        self._said: tuple[str, str | None] | None = None

    def __enter__(self) -> "Screen":
        if self.console.is_terminal:
            self.live = Live(self.renderable(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self.renderable(), refresh=True)
            self.live.__exit__(None, None, None)

    def stages(self) -> Table:
        view = self.view
        name_width = max(len(stage) for stage, _ in view.stages)
        bar_width = max(10, self.console.width - name_width - 20)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, justify="right")
        now = time.time()
        for stage, span in view.stages:
            took = _duration((span.ended_at or now) - span.began_at)
            if span.end is not None:
                state = Text(f"done {took}", style="green")
            else:
                state = Text(f"{100 * view.fraction:3.0f}% {took}", style="cyan")
            grid.add_row(Text(stage.ljust(name_width)), stage_bar(span, view.fraction, bar_width), state)
        return grid

    def renderable(self) -> RenderableType:
        view = self.view
        header = Text(f"{view.kind} job {view.job_id} ", style="bold")
        header.append(view.status + (f" · {view.stage}" if view.stage else ""), style=_status_style(view.status))
        parts: list[RenderableType] = [header]
        parts.extend(Text(note, style="yellow") for note in view.notes[-3:])
        if view.stages:
            parts.append(self.stages())
        curves = render_curves(view, self.console.width)
        if curves is not None:
            parts.append(curves)
        return Group(*parts)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.renderable())
            return
        said = (self.view.status, self.view.stage)
        if said != self._said:  # no terminal: a line per change of status or stage, nothing else
            self._said = said
            stage = f" stage {self.view.stage}" if self.view.stage else ""
            self.console.print(f"job {self.view.job_id}: {self.view.status}{stage}", highlight=False)


def _status_style(status: str) -> str:
    return {"succeeded": "green", "failed": "red", "cancelled": "red", "running": "cyan"}.get(status, "yellow")


# --- the sources of events --------------------------------------------------------------------------------------


def sse_events(
    lethe: LetheClient, job_id: str, after: int, sleep: Callable[[float], None] = time.sleep
) -> Iterator[Event]:
    """The job's events from the SSE stream, from after `after`, resumed with Last-Event-ID when it drops, until
    its terminal event."""
    # Here, not at the top: only a streamed watch needs it (admin commands on a host without it still start).
    from httpx_sse import SSEError, connect_sse

    last, failures = after, 0
    timeout = httpx.Timeout(lethe.config.timeout_s, read=max(60.0, lethe.config.timeout_s))
    while True:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
        try:
            path = f"/v1/jobs/{job_id}/events"
            with connect_sse(lethe.http, "GET", path, headers=headers, timeout=timeout) as source:
                response = source.response
                if response.status_code == 404:
                    response.read()
                    raise NoEventsRoute()
                if response.is_error:
                    response.read()
                    raise api_error(response)
                for sse in source.iter_sse():
                    if not sse.data:
                        continue
                    event = sse.json()
                    failures = 0
                    if isinstance(event.get("seq"), int):
                        last = event["seq"]
                    yield event
                    if event.get("type") in TERMINAL:
                        return
        except SSEError as exc:  # an answer that is not a stream: the events route is not there to stream
            raise NoEventsRoute() from exc
        except httpx.TransportError as exc:
            failures += 1
            if failures > MAX_RECONNECTS:
                raise lethe.unreachable(exc) from exc
        else:
            failures += 1  # the stream ended before the job did (a restarted server): resume it
            if failures > MAX_RECONNECTS:
                raise CliError(f"the event stream of job {job_id} keeps ending before the job", ExitCode.UNREACHABLE)
        sleep(0 if failures <= 1 else min(30.0, 2.0 ** (failures - 2)))


def page_events(
    lethe: LetheClient, job_id: str, after: int, sleep: Callable[[float], None] = time.sleep
) -> Iterator[Event]:
    """The same events as JSON pages (`after`), until a page says the job has ended and nothing is left."""
    while True:
        response = lethe.http.get(f"/v1/jobs/{job_id}/events", params={"after": after, "limit": 200})
        if response.status_code == 404:
            raise NoEventsRoute()
        if response.is_error:
            raise api_error(response)
        page = response.json()
        yield from page["items"]
        after = int(page.get("next_after") or after)
        if page.get("terminal"):
            return
        if not page["items"]:
            sleep(POLL_INTERVAL_S)


def watch(
    lethe: LetheClient, job: dict[str, Any], console: Console, stream: bool = True, poll_s: float = POLL_INTERVAL_S
) -> dict[str, Any]:
    """Follow `job` (a `GET /v1/jobs/{id}` body) on screen until it ends; the ended job, read again."""
    job_id = str(job["id"])
    view = JobView(job_id=job_id, kind=job.get("kind", "forget"), status=job["status"])
    if view.ended:
        view.apply_job(job)  # nothing to follow: its last stage and its curve
    # Otherwise the events, replayed from the first, build the stages and the curve in order.
    try:
        with Screen(view, console) as screen:
            screen.refresh()
            if not view.ended:
                try:
                    events = sse_events(lethe, job_id, 0) if stream else page_events(lethe, job_id, 0)
                    for event in events:
                        view.apply(event)
                        screen.refresh()
                except NoEventsRoute:
                    view.apply_job(job)
                    while not view.ended:  # a Lethe without the events route: poll the job itself
                        time.sleep(poll_s)
                        view.apply_job(lethe.get_json(f"/v1/jobs/{job_id}"))
                        screen.refresh()
    except KeyboardInterrupt as exc:
        raise CliError(
            f"stopped watching; job {job_id} goes on (lethe jobs watch {job_id})", ExitCode.INTERRUPTED
        ) from exc
    ended: dict[str, Any] = lethe.get_json(f"/v1/jobs/{job_id}")
    return ended
