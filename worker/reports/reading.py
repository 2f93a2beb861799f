"""Reading a signed audit report (schema `lethe.audit-report/3`) for display: the page and its plots draw only
from the report, and any field may be missing or null (an older report, an undefined number)."""

import math
from typing import Any

Report = dict[str, Any]
VERDICTS = ("robust", "shallow", "inconclusive")


def finite(value: Any) -> bool:
    """A number that can be shown or plotted (JSON null, a string or a bool are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def verdict_of(value: Any) -> str:
    """A verdict as the page shows it: anything but robust or shallow reads inconclusive."""
    return value if value in VERDICTS else "inconclusive"


def is_damage(attack: dict[str, Any]) -> bool:
    """Whether the attack measures damage (trigger: retain drop) rather than recovery."""
    return attack.get("effect") == "damage"


def attack_named(report: Report, name: str) -> dict[str, Any] | None:
    return next((a for a in report.get("attacks") or [] if a.get("name") == name), None)


def diagnostic_named(report: Report, name: str) -> dict[str, Any] | None:
    return next((d for d in report.get("diagnostics") or [] if d.get("name") == name), None)


def recovery_threshold(report: Report, attack: str) -> float | None:
    """The recovery at or above which `attack` finds the forgetting shallow (its own, or the audit's)."""
    thresholds = report.get("thresholds") or {}
    value = (thresholds.get("attacks") or {}).get(attack, thresholds.get("recovery"))
    return value if isinstance(value, int | float) else None
