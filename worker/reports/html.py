"""The audit report as one self-contained HTML page: tables, and plots embedded as PNG data URIs.

`render_html` is a pure function of the signed report (schema `lethe.audit-report/1`): no network, no JavaScript,
no file. Dataset names and params come from users, so every string of the report is HTML-escaped, and plot labels
escape `$` so that matplotlib draws a name as text instead of parsing it as TeX.

Figures are `matplotlib.figure.Figure`s drawn on their own Agg canvas, never pyplot's: pyplot keeps every figure
in a process-wide registry (a leak in a long-running worker unless each is closed, and not thread-safe), and
`matplotlib.use` would change the backend of the whole process.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# 640 x 360 px per plot: six of them keep the page well under a megabyte.
FIGSIZE_IN = (6.4, 3.6)
DPI = 100
VERDICTS = ("robust", "shallow", "inconclusive")
COLOURS = {"robust": "#2e7d32", "shallow": "#c62828", "inconclusive": "#757575"}
LABEL_CHARS = 40

Report = dict[str, Any]


@dataclass(frozen=True)
class Plot:
    """One plot of the page: heading, alt text and caption (plain text, escaped on output) and its PNG bytes."""

    title: str
    alt: str
    caption: str
    png: bytes


def render_html(signed: dict[str, Any]) -> str:
    """The signed audit report as one self-contained HTML page (inline CSS and PNGs, no script, no URL)."""
    report: Report = signed["report"]
    title = f"Lethe audit report {report.get('audit_id', '')}".strip()
    body = "\n".join(
        [
            _header(report),
            _verdict_banner(report),
            _summary(report),
            _plots(report),
            _details(report),
            _forget_job(report),
            _footer(signed.get("signature") or {}),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    """Escaped text for HTML content and double-quoted attributes."""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    """A score or rate with fixed digits; an em dash where the report has none (undefined)."""
    if not _finite(value):
        return "—"
    return f"{value:.{digits}f}"


def _verdict(value: Any) -> str:
    return value if value in VERDICTS else "inconclusive"


def _note(text: str) -> str:
    return f'<span class="note">{_e(text)}</span>'


def _pill(verdict: Any) -> str:
    verdict = _verdict(verdict)
    return f'<span class="pill {verdict}">{verdict}</span>'


def _dl(items: list[tuple[str, str]]) -> str:
    """A definition list; the values are HTML already."""
    rows = "".join(f"<dt>{_e(term)}</dt><dd>{value}</dd>" for term, value in items)
    return f"<dl>{rows}</dl>"


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return f"<code>{_e(text)}</code>"


def _table(headers: list[str], rows: list[list[str]], numeric_from: int) -> str:
    """A table; the cells are HTML already; columns from `numeric_from` on are right-aligned."""
    head = "".join(f'<th{_num_class(i, numeric_from)} scope="col">{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{_num_class(i, numeric_from)}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num_class(column: int, numeric_from: int) -> str:
    return ' class="n"' if column >= numeric_from else ""


def _attack(report: Report, name: str) -> dict[str, Any] | None:
    return next((a for a in report.get("attacks") or [] if a.get("name") == name), None)


def _recovery_threshold(report: Report, attack: str) -> float | None:
    thresholds = report.get("thresholds") or {}
    value = (thresholds.get("attacks") or {}).get(attack, thresholds.get("recovery"))
    return value if isinstance(value, int | float) else None


def _is_damage(attack: dict[str, Any]) -> bool:
    return attack.get("effect") == "damage"


def _finite(value: Any) -> bool:
    """A number the page can show or plot (JSON null, a string or a bool are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------------- sections


def _header(report: Report) -> str:
    adapter = report.get("adapter") or {}
    forget_job = report.get("forget_job") or {}
    return (
        "<header><h1>Lethe audit report</h1>"
        + _dl(
            [
                ("Audit", _code(report.get("audit_id", "—"))),
                ("Adapter", f"{_code(adapter.get('id', '—'))} {_note('sha256')} {_code(adapter.get('sha256', '—'))}"),
                ("Base model", _e(adapter.get("base_model", "—"))),
                (
                    "Method",
                    f"{_e(forget_job.get('method', '—'))} {_note('on')} "
                    f"{_e(forget_job.get('kind', '—'))} {_note('rows')}",
                ),
                ("Forget job", _code(adapter.get("forget_job_id", "—"))),
                ("Created", _e(report.get("created_at", "—"))),
                ("Lethe", f"{_e(report.get('lethe_version', '—'))} {_note('schema')} {_e(report.get('schema', '—'))}"),
            ]
        )
        + "</header>"
    )


def _verdict_banner(report: Report) -> str:
    verdict = _verdict(report.get("verdict"))
    attacks = report.get("attacks") or []
    shallow = [a for a in attacks if a.get("verdict") == "shallow"]
    inconclusive = [str(a.get("name", "?")) for a in attacks if _verdict(a.get("verdict")) == "inconclusive"]
    if verdict == "shallow":
        recovered = [str(a.get("name", "?")) for a in shallow if not _is_damage(a)]
        damaged = [str(a.get("name", "?")) for a in shallow if _is_damage(a)]
        findings = []
        if recovered:
            findings.append(f"{', '.join(recovered)} brought back at least their threshold of what forgetting removed")
        if damaged:
            findings.append(f"{', '.join(damaged)}: forget-set words damage retain queries beyond the threshold")
        text = f"{len(shallow)} of {len(attacks)} attacks found the forgetting shallow. {'; '.join(findings)}."
    elif verdict == "robust":
        text = "No attack recovered as much as its threshold of what forgetting removed."
        if inconclusive:
            text += f" Inconclusive (nothing measurable was forgotten there): {', '.join(inconclusive)}."
    else:
        min_forgetting = (report.get("thresholds") or {}).get("min_forgetting")
        text = (
            f"No attack could measure a recovery: forgetting removed less than {_num(min_forgetting, 2)} of the "
            "score each attack measures, so there was nothing to recover."
        )
    return (
        f'<section class="verdict {verdict}" role="status"><p class="verdict-word">Verdict: {verdict}</p>'
        f"<p>{_e(text)}</p></section>"
    )


def _summary(report: Report) -> str:
    attacks = report.get("attacks") or []
    if not attacks:
        return "<section><h2>Attacks</h2><p>This audit ran no attack.</p></section>"
    thresholds = report.get("thresholds") or {}
    rows = []
    for attack in attacks:
        name = attack.get("name", "?")
        if _is_damage(attack):
            result = f"{_num(attack.get('excess_drop'))} {_note('excess drop')}"
            threshold = f"≥ {_num(thresholds.get('trigger_drop'), 2)} {_note('drop')}"
        else:
            result = _num(attack.get("recovery"))
            threshold = f"≥ {_num(_recovery_threshold(report, name), 2)}"
        rows.append(
            [
                f"<strong>{_e(name)}</strong>",
                f"{_e(attack.get('metric', '—'))} {_note('on')} {_e(attack.get('split', '—'))}",
                _num(attack.get("before")),
                _num(attack.get("after_forgetting")),
                _num(attack.get("after_attack")),
                result,
                threshold,
                _e(attack.get("worst_variant") or "—"),
                _pill(attack.get("verdict")),
            ]
        )
    table = _table(
        [
            "Attack",
            "Measures",
            "Before",
            "After forgetting",
            "After attack",
            "Recovery / excess drop",
            "Threshold",
            "Worst variant",
            "Verdict",
        ],
        rows,
        numeric_from=2,
    )
    return (
        "<section><h2>Attacks</h2>"
        "<p>Each attack's worst variant. Recovery = (after attack − floor) / (before − floor), clipped to [0, 1], "
        "where floor = after forgetting, or the chance accuracy of choice rows if forgetting went below it "
        "(bringing a flipped LM back to guessing is no recovery); — where forgetting removed less than "
        f"{_num(thresholds.get('min_forgetting'), 2)} (inconclusive). The trigger attack measures damage instead: "
        "the retain score's drop beyond the drop the same insertion causes before forgetting.</p>"
        f"{table}</section>"
    )


def _plots(report: Report) -> str:
    parts = ["<section><h2>Plots</h2>"]
    for title, build, absent in PLOTS:
        plot = build(report)
        if plot is None:
            parts.append(f'<p class="omitted"><strong>{_e(title)}</strong>: not shown, {_e(absent)}.</p>')
            continue
        data = base64.b64encode(plot.png).decode("ascii")
        width, height = (round(side * DPI) for side in FIGSIZE_IN)
        parts.append(
            f"<figure><h3>{_e(plot.title)}</h3>"
            f'<img src="data:image/png;base64,{data}" alt="{_e(plot.alt)}" width="{width}" height="{height}">'
            f"<figcaption>{_e(plot.caption)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _details(report: Report) -> str:
    attacks = report.get("attacks") or []
    if not attacks:
        return ""
    parts = ["<section><h2>Details</h2>"]
    for attack in attacks:
        variants = attack.get("variants") or []
        rows = [
            [
                _e(v.get("name", "?")),
                _e(v["layer"]) if v.get("layer") is not None else "—",
                _num(v.get("before")),
                _num(v.get("after_forgetting")),
                _num(v.get("after_attack")),
                _num(v.get("recovery")),
                _num(v.get("excess_drop")),
            ]
            for v in variants
        ]
        table = _table(
            ["Variant", "Layer", "Before", "After forgetting", "After attack", "Recovery", "Excess drop"],
            rows,
            numeric_from=1,
        )
        parts.append(
            f"<details><summary><strong>{_e(attack.get('name', '?'))}</strong> {_pill(attack.get('verdict'))} "
            f"{_note(f'{len(variants)} variant' + ('' if len(variants) == 1 else 's'))}</summary>"
            f"<p>{_e(attack.get('description', ''))}</p>"
            f"<p>{_note('params')} {_code(attack.get('params') or {})}</p>{table}</details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _forget_job(report: Report) -> str:
    job = report.get("forget_job") or {}
    facts = _dl(
        [
            ("Method", _e(job.get("method", "—"))),
            ("Method params", _code(job.get("method_params") or {})),
            ("Kind", _e(job.get("kind", "—"))),
            ("Seed", _e(job.get("seed", "—"))),
            ("Steps", f"{_e(job.get('steps', '—'))} {_note('stopped by')} {_e(job.get('stop_reason', '—'))}"),
        ]
    )
    splits = job.get("splits") or {}
    datasets = job.get("dataset_sha256") or {}
    tables = ""
    if splits:
        tables += "<h3>Rows per split</h3>" + _table(
            ["Split", "Rows"], [[_e(k), _e(v)] for k, v in splits.items()], numeric_from=1
        )
    if datasets:
        tables += "<h3>Datasets</h3>" + _table(
            ["Dataset", "sha256"], [[_e(k), _code(v)] for k, v in datasets.items()], numeric_from=2
        )
    tables += _stage_metrics(report.get("stage_metrics") or [])
    return f"<section><h2>Forget job</h2>{facts}{tables}</section>"


def _stage_metrics(metrics: list[dict[str, Any]]) -> str:
    """Metrics by (split, name) row and stage column, stages in pipeline order."""
    if not metrics:
        return ""
    order = ["base", "finetuned", "forgotten"]
    stages = sorted({str(m.get("stage")) for m in metrics}, key=lambda s: (order.index(s) if s in order else 99, s))
    values: dict[tuple[str, str], dict[str, Any]] = {}
    for m in metrics:
        values.setdefault((str(m.get("split")), str(m.get("name"))), {})[str(m.get("stage"))] = m.get("value")
    rows = [
        [_e(split), _e(name), *(_num(by_stage.get(stage)) for stage in stages)]
        for (split, name), by_stage in values.items()
    ]
    return "<h3>Metrics by stage</h3>" + _table(["Split", "Metric", *stages], rows, numeric_from=2)


def _footer(signature: dict[str, Any]) -> str:
    return (
        "<footer><h2>Signature</h2>"
        + _dl(
            [
                ("Algorithm", _e(signature.get("algorithm", "—"))),
                ("Key id", _code(signature.get("key_id", "—"))),
                ("Value", _code(signature.get("value", "—"))),
            ]
        )
        + "<p>The signature covers the JSON report (its canonical form: sorted keys, no whitespace, UTF-8), not "
        "this page, which is drawn from it. To check it, download the JSON report "
        "(<code>GET /v1/audits/{id}/report</code>) and run <code>lethe verify-report report.json</code> with the "
        "server's signing key (<code>LETHE_REPORT_SIGNING_KEY</code>).</p></footer>"
    )


# ---------------------------------------------------------------------------------------------------- plots


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" entry: the same report gives the same bytes whatever matplotlib drew it.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _label(text: Any) -> str:
    """A user string as a matplotlib label: shortened, `$` drawn as itself rather than starting TeX."""
    text = str(text)
    if len(text) > LABEL_CHARS:
        text = text[: LABEL_CHARS - 1] + "…"
    return text.replace("$", r"\$")


def _xy(points: Any) -> tuple[list[float], list[float]]:
    """The (step, value) points with both numbers defined."""
    pairs = [p for p in points or [] if isinstance(p, list | tuple) and len(p) == 2 and all(map(_finite, p))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _reference_lines(ax: Axes, attack: dict[str, Any]) -> None:
    if _finite(attack.get("before")):
        ax.axhline(attack["before"], color=COLOURS["robust"], linestyle=":", label="before forgetting")
    if _finite(attack.get("after_forgetting")):
        ax.axhline(attack["after_forgetting"], color=COLOURS["shallow"], linestyle=":", label="after forgetting")


def _training_plot(report: Report) -> Plot | None:
    curves = [c for c in report.get("training_curves") or [] if _xy(c.get("points"))[0]]
    if not curves:
        return None
    metrics = sorted({str(c.get("name")) for c in curves})
    fig, ax = _figure()
    last_step = 0.0
    for curve in curves:
        steps, values = _xy(curve.get("points"))
        split = str(curve.get("split"))
        label = split if len(metrics) == 1 else f"{split} · {curve.get('name')}"
        # Forget splits solid, retain splits dashed: what should fall against what should hold.
        style = "-" if split.startswith("forget") else "--"
        ax.plot(steps, values, linestyle=style, marker="o", markersize=3, label=_label(label))
        last_step = max(last_step, *steps)
    ax.set_xlabel("forgetting step")
    ax.set_ylabel(_label(metrics[0]) if len(metrics) == 1 else "value")
    ax.legend(fontsize=8)
    splits = ", ".join(str(c.get("split")) for c in curves)
    return Plot(
        "Forgetting over training steps",
        f"Line chart: {' and '.join(metrics)} of {splits} over {last_step:g} forgetting steps.",
        "Scores measured while the method trained: forget splits (solid) should fall, retain splits (dashed) hold.",
        _png(fig),
    )


def _probe_plot(report: Report) -> Plot | None:
    attack = _attack(report, "probe")
    if attack is None:
        return None
    layers = sorted(
        (v for v in attack.get("variants") or [] if _finite(v.get("layer"))), key=lambda v: float(v["layer"])
    )
    before = [(v["layer"], v["before"]) for v in layers if _finite(v.get("before"))]
    after = [(v["layer"], v["after_attack"]) for v in layers if _finite(v.get("after_attack"))]
    if not before and not after:
        return None
    fig, ax = _figure()
    if before:
        ax.plot(*zip(*before, strict=True), marker="o", markersize=3, color=COLOURS["robust"], label="probe before")
    if after:
        ax.plot(*zip(*after, strict=True), marker="o", markersize=3, color=COLOURS["shallow"], label="probe after")
    if _finite(attack.get("after_forgetting")):
        ax.axhline(attack["after_forgetting"], color="black", linestyle="--", label="LM after forgetting")
    ax.set_xlabel("layer")
    ax.set_ylabel(_label(f"{attack.get('metric', 'score')} on {attack.get('split', '?')}"))
    ax.legend(fontsize=8)
    return Plot(
        "Probe accuracy by layer",
        f"Line chart: linear-probe {attack.get('metric', 'score')} on {attack.get('split', '?')} at each of "
        f"{len(layers)} layers, before and after forgetting, with the LM's own score after forgetting as a line.",
        "A probe after forgetting well above the LM's own score (dashed) means the hidden states still encode the "
        "task: forgetting changed the output, not the representation.",
        _png(fig),
    )


def _recovery_plot(report: Report) -> Plot | None:
    attacks = [a for a in report.get("attacks") or [] if not _is_damage(a)]
    if not attacks:
        return None
    fig, ax = _figure()
    names = [str(a.get("name")) for a in attacks]
    threshold_labelled = False
    for i, attack in enumerate(attacks):
        recovery = attack.get("recovery")
        if _finite(recovery):
            bar = ax.bar(i, recovery, color=COLOURS[_verdict(attack.get("verdict"))], width=0.6)
            ax.bar_label(bar, fmt="%.2f", fontsize=8)
        else:
            ax.text(i, 0.03, "inconclusive", rotation=90, ha="center", va="bottom", fontsize=8, color="#555555")
        threshold = _recovery_threshold(report, names[i])
        if threshold is not None:
            ax.hlines(
                threshold,
                i - 0.4,
                i + 0.4,
                colors="black",
                linestyles="--",
                # One legend entry for all the attacks' segments ("_"-prefixed labels stay out of the legend).
                label="_threshold" if threshold_labelled else "threshold",
            )
            threshold_labelled = True
    ax.set_xticks(range(len(names)), [_label(n) for n in names], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recovery")
    if threshold_labelled:
        ax.legend(fontsize=8)
    conclusive = [a for a in attacks if _finite(a.get("recovery"))]
    caption = "Worst-variant recovery per attack (red: shallow, green: robust); dashed: the attack's threshold."
    if len(conclusive) < len(attacks):
        caption += " Attacks marked inconclusive had nothing measurable to recover."
    if len(attacks) < len(report.get("attacks") or []):
        caption += " The trigger attack measures damage, not recovery: see the table."
    return Plot(
        "Recovery by attack",
        f"Bar chart: recovery of {len(conclusive)} attacks ({', '.join(names)}) against their thresholds; "
        f"{len(attacks) - len(conclusive)} inconclusive.",
        caption,
        _png(fig),
    )


def _relearn_plot(report: Report) -> Plot | None:
    attack = _attack(report, "relearn")
    curves = {name: _xy(points) for name, points in ((attack or {}).get("curves") or {}).items()}
    curves = {name: xy for name, xy in curves.items() if xy[0]}
    if attack is None or not curves:
        return None
    fig, ax = _figure()
    for name, (steps, values) in curves.items():
        # The benign curve is the control (retain data only): grey, so the forget-set curves stand out.
        colour, style = ("#757575", "--") if name == "benign" else (None, "-")
        ax.plot(steps, values, marker="o", markersize=3, color=colour, linestyle=style, label=_label(name))
    _reference_lines(ax, attack)
    ax.set_xlabel("relearning step")
    ax.set_ylabel(_label(f"{attack.get('metric', 'score')} on {attack.get('split', '?')}"))
    ax.legend(fontsize=8)
    return Plot(
        "Relearning curves",
        f"Line chart: {attack.get('metric', 'score')} on {attack.get('split', '?')} over relearning steps for "
        f"{', '.join(curves)}, with the scores before and after forgetting as reference lines.",
        "Fine-tuning the forgotten adapter on k forget-train rows, scored on held-out rows it never saw; a curve "
        "climbing back towards 'before forgetting' within a few steps means the forgetting was shallow.",
        _png(fig),
    )


def _recovery_bars(ax: Axes, xs: list[float], variants: list[dict[str, Any]], threshold: float | None) -> None:
    """Bars of each variant's recovery, red at or above the threshold; a grey x where it is undefined."""
    undefined = [x for x, v in zip(xs, variants, strict=True) if not _finite(v.get("recovery"))]
    defined = [(x, v["recovery"]) for x, v in zip(xs, variants, strict=True) if _finite(v.get("recovery"))]
    if defined:
        colours = [
            COLOURS["shallow"] if threshold is not None and r >= threshold else COLOURS["robust"] for _, r in defined
        ]
        ax.bar([x for x, _ in defined], [r for _, r in defined], color=colours, width=0.7)
    if undefined:
        ax.plot(undefined, [0.0] * len(undefined), "x", color="#757575", label="inconclusive")
    if threshold is not None:
        ax.axhline(threshold, color="black", linestyle="--", label="threshold")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recovery")
    ax.legend(fontsize=8)


def _restore_plot(report: Report) -> Plot | None:
    attack = _attack(report, "restore")
    if attack is None or not attack.get("variants"):
        return None
    variants = attack["variants"]
    groups = [v for v in variants if not _finite(v.get("layer"))]
    layers = sorted((v for v in variants if _finite(v.get("layer"))), key=lambda v: float(v["layer"]))
    ordered = groups + layers
    labels = [_label(v.get("name", "?")) for v in groups] + [f"L{v['layer']}" for v in layers]
    fig, ax = _figure()
    xs = [float(i) for i in range(len(ordered))]
    _recovery_bars(ax, xs, ordered, _recovery_threshold(report, "restore"))
    if groups and layers:
        ax.axvline(len(groups) - 0.5, color="#bdbdbd")
    ax.set_xticks(xs, labels, rotation=90, fontsize=7 if len(ordered) > 12 else 8)
    ax.set_xlabel("restored parameter group (Ln: decoder block n alone)")
    return Plot(
        "Restoration by parameter group",
        f"Bar chart: recovery when each of {len(ordered)} parameter groups is restored to its pre-forgetting "
        f"values ({len(groups)} groups, {len(layers)} single layers).",
        "Dropping the forgetting delta of one group at a time: a group that alone brings the knowledge back is "
        "where the forgetting lives (red: at or above the threshold).",
        _png(fig),
    )


def _patch_plot(report: Report) -> Plot | None:
    attack = _attack(report, "patch")
    layers = sorted(
        (v for v in (attack or {}).get("variants") or [] if _finite(v.get("layer"))), key=lambda v: float(v["layer"])
    )
    if attack is None or not layers:
        return None
    fig, ax = _figure()
    _recovery_bars(ax, [float(v["layer"]) for v in layers], layers, _recovery_threshold(report, "patch"))
    ax.set_xlabel("patched layer")
    return Plot(
        "Activation patching by layer",
        f"Bar chart: recovery when the output of each of {len(layers)} layers is replaced by the pre-forgetting "
        "LM's on forget prompts.",
        "Patching one layer's hidden state with the pre-forgetting LM's: the layers whose patch restores the "
        "answer carry the forgetting (red: at or above the threshold).",
        _png(fig),
    )


# (title, builder, why it is absent) in page order.
PLOTS: list[tuple[str, Callable[[Report], Plot | None], str]] = [
    ("Forgetting over training steps", _training_plot, "the report has no training curves"),
    ("Probe accuracy by layer", _probe_plot, "the audit ran no probe attack (or it measured no layer)"),
    ("Recovery by attack", _recovery_plot, "the audit ran no recovery attack"),
    ("Relearning curves", _relearn_plot, "the audit ran no relearn attack (or it recorded no curve)"),
    ("Restoration by parameter group", _restore_plot, "the audit ran no restore attack"),
    ("Activation patching by layer", _patch_plot, "the audit ran no patch attack (or it measured no layer)"),
]

CSS = """
body { margin: 0; background: #fafafa; color: #212121; font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 1.5rem; background: #fff; }
h1 { margin: 0 0 .5rem; font-size: 1.6rem; }
h2 { margin: 2rem 0 .6rem; font-size: 1.25rem; border-bottom: 1px solid #e0e0e0; padding-bottom: .2rem; }
h3 { margin: 1.2rem 0 .4rem; font-size: 1.05rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: 0; }
dt { color: #616161; }
dd { margin: 0; overflow-wrap: anywhere; }
code { font: 13px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; background: #f5f5f5; padding: 0 .2rem;
  overflow-wrap: anywhere; }
.note { color: #757575; font-size: .85em; }
.verdict { margin: 1.2rem 0; padding: .8rem 1rem; border-left: 6px solid; border-radius: 4px; }
.verdict p { margin: .2rem 0; }
.verdict-word { font-size: 1.3rem; font-weight: bold; }
.verdict.shallow { background: #ffebee; border-color: #c62828; }
.verdict.robust { background: #e8f5e9; border-color: #2e7d32; }
.verdict.inconclusive { background: #f5f5f5; border-color: #757575; }
.pill { display: inline-block; padding: 0 .5rem; border-radius: 1rem; font-size: .85em; color: #fff; }
.pill.shallow { background: #c62828; }
.pill.robust { background: #2e7d32; }
.pill.inconclusive { background: #757575; }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 1rem; font-size: 14px; }
th, td { border-bottom: 1px solid #e0e0e0; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 1.5rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eeeeee; }
figcaption { color: #616161; font-size: .9em; }
.omitted { color: #757575; }
details { margin: .4rem 0; }
summary { cursor: pointer; }
footer { margin-top: 2rem; font-size: .9em; }
"""
