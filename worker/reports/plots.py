"""The audit report's plots: matplotlib figures drawn from the signed report, as PNG bytes for the HTML page.

Figures are `matplotlib.figure.Figure`s on their own Agg canvas, never pyplot's: pyplot keeps every figure in a
process-wide registry (a leak in a long-running worker unless each is closed, and not thread-safe), and
`matplotlib.use` would change the backend of the whole process. Labels come from users (dataset names, variant
names): `$` is escaped so that matplotlib draws a name as text instead of parsing it as TeX.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from worker.reports.reading import (
    Report,
    attack_named,
    diagnostic_named,
    finite,
    is_damage,
    recovery_threshold,
    verdict_of,
)

# 640 x 360 px per plot: six of them keep the page well under a megabyte.
FIGSIZE_IN = (6.4, 3.6)
DPI = 100
WIDTH_PX, HEIGHT_PX = (round(side * DPI) for side in FIGSIZE_IN)
COLOURS = {"robust": "#2e7d32", "shallow": "#c62828", "inconclusive": "#757575"}
LABEL_CHARS = 40


@dataclass(frozen=True)
class Plot:
    """One plot: heading, alt text and caption (plain text, escaped by the page) and its PNG bytes."""

    title: str
    alt: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class PlotSlot:
    """A plot's place on the page: the plot, or None and why it is not shown."""

    title: str
    plot: Plot | None
    absent: str


def draw_plots(report: Report) -> list[PlotSlot]:
    """Every plot of the page in page order, each drawn or said to be absent."""
    return [PlotSlot(title, build(report), absent) for title, build, absent in PLOTS]


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _plot(fig: Figure, ax: Axes, title: str, alt: str, caption: str, xlabel: str = "", ylabel: str = "") -> Plot:
    """Label the axes, give the labelled lines and bars a legend, and draw the figure as one plot of the page."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return Plot(title, alt, caption, _png(fig))


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
    pairs = [p for p in points or [] if isinstance(p, list | tuple) and len(p) == 2 and all(map(finite, p))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _measures(attack: dict[str, Any]) -> str:
    """What the attack scores, as "accuracy on forget_heldout"."""
    return f"{attack.get('metric', 'score')} on {attack.get('split', '?')}"


def _layer_variants(attack: dict[str, Any]) -> list[dict[str, Any]]:
    """The attack's per-layer variants (those with a layer), in layer order."""
    variants = attack.get("variants") or []
    return sorted((v for v in variants if finite(v.get("layer"))), key=lambda v: float(v["layer"]))


def _reference_lines(ax: Axes, attack: dict[str, Any]) -> None:
    if finite(attack.get("before")):
        ax.axhline(attack["before"], color=COLOURS["robust"], linestyle=":", label="before forgetting")
    if finite(attack.get("after_forgetting")):
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
    forgetting = (report.get("forget_job") or {}).get("forgetting") or {}
    if finite(forgetting.get("target")):
        # The stop rule's target for forget_train's primary score: where the solid forget_train line should end.
        ax.axhline(forgetting["target"], color="#757575", linestyle=":", label="target (forget_train)")
    splits = ", ".join(str(c.get("split")) for c in curves)
    return _plot(
        fig,
        ax,
        "Forgetting over training steps",
        f"Line chart: {' and '.join(metrics)} of {splits} over {last_step:g} forgetting steps.",
        "Scores measured while the method trained: forget splits (solid) should fall, retain splits (dashed) hold.",
        xlabel="forgetting step",
        ylabel=_label(metrics[0]) if len(metrics) == 1 else "value",
    )


def _probe_plot(report: Report) -> Plot | None:
    attack = attack_named(report, "probe")
    if attack is None:
        return None
    layers = _layer_variants(attack)
    before = [(v["layer"], v["before"]) for v in layers if finite(v.get("before"))]
    after = [(v["layer"], v["after_attack"]) for v in layers if finite(v.get("after_attack"))]
    if not before and not after:
        return None
    fig, ax = _figure()
    if before:
        ax.plot(*zip(*before, strict=True), marker="o", markersize=3, color=COLOURS["robust"], label="probe before")
    if after:
        ax.plot(*zip(*after, strict=True), marker="o", markersize=3, color=COLOURS["shallow"], label="probe after")
    if finite(attack.get("after_forgetting")):
        ax.axhline(attack["after_forgetting"], color="black", linestyle="--", label="LM after forgetting")
    return _plot(
        fig,
        ax,
        "Probe accuracy by layer",
        f"Line chart: linear-probe {_measures(attack)} at each of {len(layers)} layers, before and after "
        "forgetting, with the LM's own score after forgetting as a line.",
        "A probe after forgetting well above the LM's own score (dashed) means the hidden states still encode the "
        "task: forgetting changed the output, not the representation.",
        xlabel="layer",
        ylabel=_label(_measures(attack)),
    )


def _recovery_plot(report: Report) -> Plot | None:
    attacks = [a for a in report.get("attacks") or [] if not is_damage(a)]
    if not attacks:
        return None
    fig, ax = _figure()
    names = [str(a.get("name")) for a in attacks]
    threshold_labelled = False
    for i, attack in enumerate(attacks):
        recovery = attack.get("recovery")
        if finite(recovery):
            bar = ax.bar(i, recovery, color=COLOURS[verdict_of(attack.get("verdict"))], width=0.6)
            ax.bar_label(bar, fmt="%.2f", fontsize=8)
        else:
            ax.text(i, 0.03, "inconclusive", rotation=90, ha="center", va="bottom", fontsize=8, color="#555555")
        threshold = recovery_threshold(report, names[i])
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
    conclusive = [a for a in attacks if finite(a.get("recovery"))]
    caption = "Worst-variant recovery per attack (red: shallow, green: robust); dashed: the attack's threshold."
    if len(conclusive) < len(attacks):
        caption += " Attacks marked inconclusive had nothing measurable to recover."
    if len(attacks) < len(report.get("attacks") or []):
        caption += " The trigger attack measures damage, not recovery: see the table."
    return _plot(
        fig,
        ax,
        "Recovery by attack",
        f"Bar chart: recovery of {len(conclusive)} attacks ({', '.join(names)}) against their thresholds; "
        f"{len(attacks) - len(conclusive)} inconclusive.",
        caption,
        ylabel="recovery",
    )


def _relearn_plot(report: Report) -> Plot | None:
    attack = attack_named(report, "relearn")
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
    return _plot(
        fig,
        ax,
        "Relearning curves",
        f"Line chart: {_measures(attack)} over relearning steps for {', '.join(curves)}, with the scores "
        "before and after forgetting as reference lines.",
        "Fine-tuning the forgotten adapter on k forget-train rows, scored on held-out rows it never saw; a curve "
        "climbing back towards 'before forgetting' within a few steps means the forgetting was shallow.",
        xlabel="relearning step",
        ylabel=_label(_measures(attack)),
    )


def _krs_plot(report: Report, name: str, title: str, intervention: str) -> Plot | None:
    """KRS by window of layers, one line per component, with the 95% intervals as bars."""
    diagnostic = diagnostic_named(report, name)
    variants = [v for v in (diagnostic or {}).get("variants") or [] if finite(v.get("krs"))]
    if diagnostic is None or not variants:
        return None
    fig, ax = _figure()
    components = list(dict.fromkeys(str(v.get("component", "?")) for v in variants))
    for component in components:
        points = sorted(
            ((float(v["first_layer"]) + float(v["last_layer"])) / 2, v)
            for v in variants
            if str(v.get("component", "?")) == component
            and finite(v.get("first_layer"))
            and finite(v.get("last_layer"))
        )
        xs = [x for x, _ in points]
        ys = [float(v["krs"]) for _, v in points]
        low = [y - v["ci_low"] if finite(v.get("ci_low")) else 0.0 for y, (_, v) in zip(ys, points, strict=True)]
        high = [v["ci_high"] - y if finite(v.get("ci_high")) else 0.0 for y, (_, v) in zip(ys, points, strict=True)]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=_label(component))
    ax.axhline(1.0, color=COLOURS["robust"], linestyle=":", label="before forgetting (KRS 1)")
    ax.axhline(0.0, color="#757575", linestyle=":")
    return _plot(
        fig,
        ax,
        title,
        f"Line chart: Knowledge Recovery Score when {intervention}, for {len(components)} components over "
        f"{len(variants)} windows of layers, with 95% intervals.",
        "A diagnostic, not an attack: where forgetting changed the LM (KRS 1: the pre-forgetting answer logits come "
        "back; 0: nothing changes). An adapter on a public base model can be removed outright: this measures "
        "localization, not depth.",
        xlabel="window of layers (centre)",
        ylabel="KRS",
    )


def _restore_plot(report: Report) -> Plot | None:
    return _krs_plot(
        report,
        "restore",
        "Restoration by component and window (KRS)",
        "one component's adapter weights in a window are put back to their pre-forgetting values",
    )


def _patch_plot(report: Report) -> Plot | None:
    return _krs_plot(
        report,
        "patch",
        "Activation patching by component and window (KRS)",
        "one component's activations in a window are taken from the pre-forgetting LM",
    )


# (title, builder, why it is absent) in page order.
PLOTS: list[tuple[str, Callable[[Report], Plot | None], str]] = [
    ("Forgetting over training steps", _training_plot, "the report has no training curves"),
    ("Probe accuracy by layer", _probe_plot, "the audit ran no probe attack (or it measured no layer)"),
    ("Recovery by attack", _recovery_plot, "the audit ran no recovery attack"),
    ("Relearning curves", _relearn_plot, "the audit ran no relearn attack (or it recorded no curve)"),
    (
        "Restoration by component and window (KRS)",
        _restore_plot,
        "the audit ran no restore diagnostic (or it measured no KRS)",
    ),
    (
        "Activation patching by component and window (KRS)",
        _patch_plot,
        "the audit ran no patch diagnostic (or it measured no KRS)",
    ),
]
