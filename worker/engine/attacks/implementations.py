"""The torch implementations of the attacks in `worker.engine.attacks.params.ATTACKS`, under the same names."""

from __future__ import annotations

from collections.abc import Callable

from worker.engine.attacks.context import AuditContext
from worker.engine.attacks.in_context import in_context
from worker.engine.attacks.outcome import AttackOutcome
from worker.engine.attacks.params import AttackParams
from worker.engine.attacks.paraphrase import paraphrase
from worker.engine.attacks.patch import patch
from worker.engine.attacks.probe import probe
from worker.engine.attacks.quantize import quantize
from worker.engine.attacks.relearn import relearn
from worker.engine.attacks.restore import restore
from worker.engine.attacks.trigger import trigger
from worker.engine.registry import Registry

Attack = Callable[[AuditContext, AttackParams], AttackOutcome]

ATTACK_IMPLEMENTATIONS: Registry[Attack] = Registry("attack implementation")
ATTACK_IMPLEMENTATIONS.register("probe", probe)
ATTACK_IMPLEMENTATIONS.register("quantize", quantize)
ATTACK_IMPLEMENTATIONS.register("restore", restore)
ATTACK_IMPLEMENTATIONS.register("patch", patch)
ATTACK_IMPLEMENTATIONS.register("relearn", relearn)
ATTACK_IMPLEMENTATIONS.register("paraphrase", paraphrase)
ATTACK_IMPLEMENTATIONS.register("in_context", in_context)
ATTACK_IMPLEMENTATIONS.register("trigger", trigger)
