"""The torch implementation of an attack or diagnostic, resolved from the import path its `lethe.attacks.ATTACKS`
spec names."""

from __future__ import annotations

from collections.abc import Callable

from lethe.attacks import ATTACKS, AttackParams
from lethe.registry import resolve
from worker.engine.audit.context import AuditContext
from worker.engine.audit.diagnostics import DiagnosticOutcome
from worker.engine.audit.outcome import AttackOutcome

Attack = Callable[[AuditContext, AttackParams], AttackOutcome]
Diagnostic = Callable[[AuditContext, AttackParams], DiagnosticOutcome]


def attack_implementation(name: str) -> Attack:
    """The function that runs attack `name` (UnknownNameError for an attack that is not registered)."""
    attack: Attack = resolve(ATTACKS.get(name).implementation)
    return attack


def diagnostic_implementation(name: str) -> Diagnostic:
    """The function that runs diagnostic `name` (restore, patch)."""
    diagnostic: Diagnostic = resolve(ATTACKS.get(name).implementation)
    return diagnostic
