"""One audit: the context of an opened adapter, the requested attacks run in order, each judged against the
thresholds, and the requested diagnostics (restore, patch) run after them, never judged."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel

from lethe.attacks import ATTACKS, AttackParams, Thresholds
from lethe.rows import Row
from lethe.specs import AttackChoice
from worker.engine.audit.attacks.implementations import attack_implementation, diagnostic_implementation
from worker.engine.audit.context import AuditContext
from worker.engine.audit.diagnostics import DiagnosticOutcome
from worker.engine.audit.outcome import AttackNotApplicable, AttackOutcome, Judgement, judge
from worker.engine.lm.inputs import max_length
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import LoraState, lora_state

# An audit scores the same rows some 70 times through the unmerged LoRA adapter, whose extra matmuls cost most at
# small batches: on SmolLM2 (2-core CPU) a pass over 48 PIQA rows took 3.9 s at batch 8 and 2.5-2.8 s at batches
# 16, 32 and 48 (one timing each, with a fresh adapter).
# Lethe default: score in batches of at least 32 rows (relearning still trains at the job's batch size).
MIN_SCORING_BATCH = 32


# The probe attack's passes score both forget splits under every reference LM (before forgetting, forgotten, the
# never-learned control) and keep those scores for the attacks that compare against them (relearn, quantize,
# paraphrase, in_context: `AuditContext.keep_reference_score`): run first, it saves them five scoring passes.
RUNS_FIRST = ("probe",)


@dataclass
class SkippedAttack:
    """An attack that had nothing to measure on the audited rows, and why."""

    name: str
    reason: str


@dataclass
class AuditedAttack:
    """An attack as run: its name, parsed params, what it measured and the judgement."""

    name: str
    params: dict[str, Any]
    outcome: AttackOutcome
    judgement: Judgement


@dataclass
class AuditedDiagnostic:
    """A diagnostic as run: its name, parsed params and what it measured (no judgement: it has no verdict)."""

    name: str
    params: dict[str, Any]
    outcome: DiagnosticOutcome


def is_diagnostic(name: str) -> bool:
    """Whether the registered attack `name` is a diagnostic (reported under diagnostics, never judged)."""
    return ATTACKS.get(name).diagnostic


def audit_context(
    base: LoadedLM,
    peft_lm: PeftModel,
    before_forgetting: LoraState,
    forget_train: Sequence[Row],
    forget_heldout: Sequence[Row],
    retain: Mapping[str, Sequence[Row]],
    batch_size: int,
    seed: int,
    finetuned: bool,
) -> AuditContext:
    """The context the attacks share: `peft_lm` holds the forgotten adapter, `before_forgetting` its earlier state;
    `finetuned`: the forget job fine-tuned first, so the base LM is a never-learned control."""
    before = {name: t.to(base.device) for name, t in before_forgetting.items()}
    return AuditContext(
        base=base,
        peft_lm=peft_lm,
        forgotten=lora_state(peft_lm),
        before=before,
        control=never_learned(before) if finetuned else None,
        forget_train=forget_train,
        forget_heldout=forget_heldout,
        retain=retain,
        batch_size=max(batch_size, MIN_SCORING_BATCH),
        train_batch_size=batch_size,
        seed=seed,
        limit=max_length(base.lm, base.tokenizer),
    )


def never_learned(state: LoraState) -> LoraState:
    """`state` with every LoRA B matrix zeroed: the adapter adds B·A = 0, so the LM is the base LM exactly."""
    return {name: torch.zeros_like(t) if ".lora_B." in name else t for name, t in state.items()}


def run_audit(
    ctx: AuditContext,
    attacks: Sequence[AttackChoice],
    thresholds: Thresholds,
    on_progress: Callable[[str, float], None],
) -> tuple[list[AuditedAttack], list[SkippedAttack]]:
    """Run every attack, `RUNS_FIRST` first and the others in order; on_progress(stage, fraction of the audit done).
    The results (and the skipped attacks) are returned in the requested order.

    Each attack starts from the forgotten adapter and torch's generator seeded with the audit's seed, so an attack's
    result does not depend on which attacks ran before it. An attack that does not apply to the rows is skipped.
    """
    order = sorted(range(len(attacks)), key=lambda i: attacks[i].name not in RUNS_FIRST)
    requested = {choice.name: position for position, choice in enumerate(attacks)}  # names are distinct
    audited: list[AuditedAttack] = []
    skipped: list[SkippedAttack] = []
    for name, params, outcome in _run_in_turn(ctx, [attacks[i] for i in order], False, on_progress, skipped):
        judgement = judge(name, outcome, thresholds, ctx.seed)
        audited.append(AuditedAttack(name, params.model_dump(mode="json"), outcome, judgement))
    audited.sort(key=lambda attack: requested[attack.name])
    skipped.sort(key=lambda attack: requested[attack.name])
    return audited, skipped


def run_diagnostics(
    ctx: AuditContext,
    diagnostics: Sequence[AttackChoice],
    on_progress: Callable[[str, float], None],
) -> tuple[list[AuditedDiagnostic], list[SkippedAttack]]:
    """Run every diagnostic in order, as `run_audit` runs attacks (torch seeded anew for each; one that does not
    apply to the rows is skipped), without judging any: on_progress(stage, fraction of the diagnostics done)."""
    done: list[AuditedDiagnostic] = []
    skipped: list[SkippedAttack] = []
    for name, params, outcome in _run_in_turn(ctx, diagnostics, True, on_progress, skipped):
        done.append(AuditedDiagnostic(name, params.model_dump(mode="json"), outcome))
    return done, skipped


def _run_in_turn(
    ctx: AuditContext,
    choices: Sequence[AttackChoice],
    diagnostic: bool,
    on_progress: Callable[[str, float], None],
    skipped: list[SkippedAttack],
) -> Iterator[tuple[str, AttackParams, Any]]:
    """Each attack (or, with `diagnostic`, each diagnostic) of `choices` run in order: (name, params, outcome).

    Each starts from the forgotten adapter with torch seeded anew; one that does not apply to the rows is added to
    `skipped`. on_progress(stage, fraction of `choices` done), the stage `attack:<name>` or `diagnostic:<name>`.
    """
    word = "diagnostic" if diagnostic else "attack"
    for index, choice in enumerate(choices):
        name = choice.name
        spec = ATTACKS.get(name)
        if spec.diagnostic and not diagnostic:
            raise ValueError(f"{name} is a diagnostic, not an attack: run it with run_diagnostics")
        if diagnostic and not spec.diagnostic:
            raise ValueError(f"{name} is an attack, not a diagnostic: run it with run_audit")
        if ctx.kind not in spec.kinds:
            raise ValueError(f"{word} {name} does not apply to {ctx.kind} rows (it supports: {', '.join(spec.kinds)})")
        params = choice.parsed()
        stage = f"{word}:{name}"

        def progress(fraction: float, index: int = index, stage: str = stage) -> None:
            on_progress(stage, (index + min(max(fraction, 0.0), 1.0)) / len(choices))

        ctx.on_progress = progress
        progress(0.0)
        torch.manual_seed(ctx.seed)
        implementation = diagnostic_implementation if diagnostic else attack_implementation
        try:
            outcome = implementation(name)(ctx, params)
        except AttackNotApplicable as exc:
            skipped.append(SkippedAttack(name, str(exc)))
            continue
        finally:
            progress(1.0)
        yield name, params, outcome
