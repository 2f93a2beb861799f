"""The torch implementation of an attack, resolved from the import path its `lethe.attacks.ATTACKS` spec names."""

from __future__ import annotations

from collections.abc import Callable

from lethe.attacks import ATTACKS, AttackParams
from worker.engine.attacks.context import AuditContext
from worker.engine.attacks.outcome import AttackOutcome
from worker.engine.methods.implementations import resolve

Attack = Callable[[AuditContext, AttackParams], AttackOutcome]


def attack_implementation(name: str) -> Attack:
    """The function that runs attack `name` (UnknownNameError for an attack that is not registered)."""
    attack: Attack = resolve(ATTACKS.get(name).implementation)
    return attack
