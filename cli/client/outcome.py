"""An ended job as the user reads it, and as a script reads it: the metrics table with intervals, the
forgetting verdict, an audit's verdict, and the exit status each of them means."""

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.exit_codes import ExitCode

STAGE_ORDER = ("base", "parent", "finetuned", "forgotten")


def _value(metric: dict[str, Any]) -> str:
    """0.500 [0.22, 0.78] for scores and proportions; -70.0 [-100, 100] for metrics on a larger scale."""
    small = abs(metric["value"]) < 10
    value = f"{metric['value']:.3f}" if small else f"{metric['value']:.1f}"
    if metric.get("ci_low") is not None and metric.get("ci_high") is not None:
        bound = ".2f" if small else ".0f"
        value += f" [{metric['ci_low']:{bound}}, {metric['ci_high']:{bound}}]"
    return value


def metrics_table(metrics: Sequence[dict[str, Any]]) -> Table:
    """One row per (split, metric, layer), one column per stage: the value and its 95% interval [low, high]."""
    stages = sorted({m["stage"] for m in metrics}, key=lambda s: (STAGE_ORDER + (s,)).index(s))
    cells: dict[tuple[str, str, int | None], dict[str, str]] = {}
    counts: dict[tuple[str, str, int | None], int | None] = {}
    for metric in metrics:
        key = (metric["split"], metric["name"], metric.get("layer"))
        cells.setdefault(key, {})[metric["stage"]] = _value(metric)
        counts[key] = metric.get("n") if metric.get("n") is not None else counts.get(key)
    # No vertical rules: the columns of values need the width (a value and its interval is ~18 characters).
    table = Table(title="metrics (value [95% interval])", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("split", no_wrap=True)
    table.add_column("metric", overflow="fold")
    table.add_column("n", justify="right")
    for stage in stages:
        table.add_column(stage, justify="right", no_wrap=True)
    for key in sorted(cells, key=lambda k: (k[0], k[1], -1 if k[2] is None else k[2])):
        split, name, layer = key
        label = name if layer is None else f"{name} @{layer}"
        n = counts.get(key)
        table.add_row(split, label, "-" if n is None else str(n), *(cells[key].get(stage, "-") for stage in stages))
    return table


def forgetting_lines(forgetting: dict[str, Any]) -> Text:
    reached = bool(forgetting["target_reached"])
    text = Text()
    text.append("target reached" if reached else "target NOT reached", style="bold green" if reached else "bold red")
    text.append(
        f": forget_train {forgetting['metric']} {forgetting['score']:.3f} "
        f"{'<=' if reached else '>'} target {forgetting['target']:.3f} "
        f"(stopped by {forgetting['stop_reason']} after {forgetting['steps']} steps)\n"
    )
    for rise in forgetting.get("rose") or []:
        text.append(
            f"{rise['split']} rose: {rise['before']:.3f} -> {rise['after']:.3f} "
            f"[{rise['ci_low']:.2f}, {rise['ci_high']:.2f}]\n",
            style="yellow",
        )
    text.append(forgetting["summary"])
    return text


def job_exit_code(job: dict[str, Any]) -> ExitCode:
    """0 for a job that succeeded (and, a forget job, reached its target); else what went wrong."""
    if job["status"] in ("failed", "cancelled"):
        return ExitCode.JOB_FAILED
    if job["status"] != "succeeded":
        return ExitCode.PENDING
    forgetting = job.get("forgetting")
    if forgetting is not None and not forgetting["target_reached"]:
        return ExitCode.TARGET_NOT_REACHED
    return ExitCode.SUCCEEDED


def show_job_outcome(job: dict[str, Any], console: Console) -> None:
    """An ended job: status, error, the metrics table, the forgetting verdict, its adapter and audits."""
    status = job["status"]
    style = "green" if status == "succeeded" else "red"
    console.print(Text(f"job {job['id']} {status}", style=f"bold {style}"), Text(f"({job.get('device') or '-'})"))
    if job.get("error"):
        console.print(Text(f"{job['error']['code']}: {job['error']['message']}", style="red"))
    if job.get("metrics"):
        console.print(metrics_table(job["metrics"]))
    if job.get("forgetting"):
        console.print(forgetting_lines(job["forgetting"]))
    if job.get("adapter_id"):
        console.print(f"adapter {job['adapter_id']} (lethe adapters download {job['adapter_id']})", highlight=False)
    if job.get("kind") == "forget":
        for audit_id in job.get("audit_ids") or []:
            console.print(f"audit {audit_id} (lethe audits get {audit_id})", highlight=False)


VERDICT_CODES = {"robust": ExitCode.SUCCEEDED, "shallow": ExitCode.SHALLOW, "inconclusive": ExitCode.INCONCLUSIVE}


def audit_exit_code(audit: dict[str, Any]) -> ExitCode:
    if audit["status"] in ("failed", "cancelled"):
        return ExitCode.JOB_FAILED
    if audit["status"] != "succeeded" or audit.get("verdict") is None:
        return ExitCode.PENDING
    return VERDICT_CODES[audit["verdict"]]


def _recovery(result: dict[str, Any]) -> str:
    key, low, high = (
        ("excess_recovery", "excess_ci_low", "excess_ci_high")
        if result.get("excess_recovery") is not None
        else ("recovery", "ci_low", "ci_high")
    )
    if result.get(key) is None:
        return "-"
    value = f"{result[key]:.3f}"
    if result.get(low) is not None and result.get(high) is not None:
        value += f" [{result[low]:.2f}, {result[high]:.2f}]"
    return value + (" (excess)" if key == "excess_recovery" else "")


def show_audit(audit: dict[str, Any], console: Console) -> None:
    """An audit: status, per attack before / after forgetting / after attack, recovery with its interval and
    verdict, and the overall verdict."""
    console.print(Text(f"audit {audit['id']} of adapter {audit['adapter_id']}: {audit['status']}", style="bold"))
    if audit.get("error"):
        console.print(Text(f"{audit['error']['code']}: {audit['error']['message']}", style="red"))
    if audit.get("results"):
        table = Table(title="attacks (recovery [95% interval])", title_justify="left")
        for column in ("attack", "split", "before", "forgotten", "attacked", "recovery", "verdict"):
            table.add_column(column, overflow="fold")
        for result in audit["results"]:
            verdict = result["verdict"] + (
                f" ({result['inconclusive_reason']})" if result.get("inconclusive_reason") else ""
            )
            table.add_row(
                result["attack"],
                result["split"],
                f"{result['before']:.3f}",
                f"{result['after_forgetting']:.3f}",
                f"{result['after_attack']:.3f}",
                _recovery(result),
                Text(verdict, style=_verdict_style(result["verdict"])),
            )
        console.print(table)
    for skipped in audit.get("skipped") or []:
        console.print(f"skipped {skipped.get('name')}: {skipped.get('reason')}", style="dim", highlight=False)
    if audit.get("verdict"):
        reasons = ", ".join(audit.get("verdict_reasons") or [])
        console.print(
            Text("verdict: ") + Text(audit["verdict"], style=f"bold {_verdict_style(audit['verdict'])}"),
            Text(f"({reasons})" if reasons else ""),
        )


def _verdict_style(verdict: str) -> str:
    return {"robust": "green", "shallow": "red"}.get(verdict, "yellow")
