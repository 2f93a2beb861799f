"""The audit report as one self-contained HTML page: templates/report.html.j2, with the plots of plots.py.

`render_html` is a pure function of the signed report (schema `lethe.audit-report/3`): no network, no JavaScript,
no file. Dataset names and params come from users, so the template autoescapes: every string of the report is
HTML-escaped wherever it lands, and only the template's own markup is not.
"""

import base64
import json
from functools import partial
from typing import Any

from jinja2 import ChainableUndefined, Environment, PackageLoader, Undefined

from worker.reports.plots import HEIGHT_PX, WIDTH_PX, draw_plots
from worker.reports.reading import Report, finite, is_damage, recovery_threshold, verdict_of

# Why an attack did not conclude, in words (outcome.py's reasons).
REASON_TEXT = {
    "too_few_rows": "too few rows for an interval to clear the threshold",
    "nothing_forgotten": "forgetting removed less than min_forgetting of what the attack measures",
    "no_control": "no never-learned control (the forget job did not fine-tune first), so a recovery may be "
    "ordinary learning",
    "interval_spans_threshold": "the interval contains the threshold",
}

# The order of a forget job's stages (`parent`: a stacked job's starting point); any other stage comes after them.
STAGES = ("base", "parent", "finetuned", "forgotten")


def render_html(signed: dict[str, Any]) -> str:
    """The signed audit report as one self-contained HTML page (inline CSS and PNGs, no script, no URL)."""
    report: Report = signed["report"]
    return _TEMPLATE.render(
        title=f"Lethe audit report {report.get('audit_id', '')}".strip(),
        report=report,
        signature=signed.get("signature") or {},
        verdict=verdict_of(report.get("verdict")),
        verdict_text=_verdict_text(report),
        recovery_threshold=partial(recovery_threshold, report),
        plots=draw_plots(report),
        plot_width=WIDTH_PX,
        plot_height=HEIGHT_PX,
        stage_metrics=_stage_metrics(report.get("stage_metrics") or []),
    )


def _verdict_text(report: Report) -> str:
    """The verdict in a sentence: which attacks found the forgetting shallow, and why the others did not conclude."""
    verdict = verdict_of(report.get("verdict"))
    attacks = report.get("attacks") or []
    inconclusive = [a for a in attacks if verdict_of(a.get("verdict")) == "inconclusive"]
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for attack in inconclusive:
        by_reason.setdefault(str(attack.get("inconclusive_reason")), []).append(attack)
    why = "; ".join(f"{_names(named)}: {REASON_TEXT.get(reason, reason)}" for reason, named in by_reason.items())
    if verdict == "shallow":
        shallow = [a for a in attacks if a.get("verdict") == "shallow"]
        recovered = [a for a in shallow if not is_damage(a)]
        damaged = [a for a in shallow if is_damage(a)]
        findings = []
        if recovered:
            findings.append(
                f"{_names(recovered)} brought back more than their threshold of what forgetting removed "
                "(the whole interval above it)"
            )
        if damaged:
            findings.append(f"{_names(damaged)}: forget-set words damage retain queries beyond the threshold")
        text = f"{len(shallow)} of {len(attacks)} attacks found the forgetting shallow. {'; '.join(findings)}."
        return text + (f" Inconclusive: {why}." if inconclusive else "")
    if verdict == "robust":
        text = (
            "Every conclusive attack recovered less than its threshold of what forgetting removed "
            "(the whole interval below it)."
        )
        if inconclusive:
            text += f" Inconclusive: {why}."
        return text
    if not inconclusive:
        return "No attack ran."
    return f"No attack could conclude. {why}."


def _names(attacks: list[dict[str, Any]]) -> str:
    return ", ".join(str(attack.get("name", "?")) for attack in attacks)


def _stage_metrics(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics as a table: a row per (split, metric), a column per stage in pipeline order; each cell the value,
    its 95% interval and n (as the report has them)."""
    stages = sorted(
        {str(m.get("stage")) for m in metrics}, key=lambda s: (STAGES.index(s) if s in STAGES else len(STAGES), s)
    )
    values: dict[tuple[str, str], dict[str, Any]] = {}
    for m in metrics:
        values.setdefault((str(m.get("split")), str(m.get("name"))), {})[str(m.get("stage"))] = m
    rows = [
        {"split": split, "name": name, "scores": [by_stage.get(stage) for stage in stages]}
        for (split, name), by_stage in values.items()
    ]
    return {"stages": stages, "rows": rows}


def _num(value: Any, digits: int = 3) -> str:
    """A score or rate with fixed digits; an em dash where the report has none (undefined)."""
    return f"{value:.{digits}f}" if finite(value) else "—"


def _shown(value: Any) -> Any:
    """Every value the template outputs: missing or null as an em dash, params and lists as JSON text."""
    if value is None or isinstance(value, Undefined):
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_ENV = Environment(
    loader=PackageLoader("worker.reports", "templates"),
    autoescape=True,
    undefined=ChainableUndefined,
    finalize=_shown,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters.update(num=_num, verdict=verdict_of, png_data_uri=_png_data_uri)
_ENV.tests["damage"] = is_damage
_TEMPLATE = _ENV.get_template("report.html.j2")
