"""Running an audit's attacks on an opened adapter."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from lethe.attacks import Thresholds
from lethe.rows import QARow
from lethe.specs import AttackChoice
from tests.engine.lm.test_lora import assert_pristine
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.context import AuditContext
from worker.engine.audit.run import audit_context, run_audit, run_diagnostics
from worker.engine.lm.adapter import opened_adapter
from worker.engine.lm.load import LoadedLM


def test_run_audit_skips_an_attack_with_nothing_to_measure(tiny_base: LoadedLM, saved_adapter) -> None:
    directory, before = saved_adapter
    rows = [QARow(question=r["question"], answer=r["answer"]) for r in synthetic_qa_rows(8, seed=0)]  # no paraphrase
    stages: list[tuple[str, float]] = []
    with opened_adapter(tiny_base, directory, before) as peft_lm:
        ctx = audit_context(tiny_base, peft_lm, before, rows[:4], rows[4:], {}, 4, 0, finetuned=False)
        audited, skipped = run_audit(
            ctx,
            [AttackChoice(name="paraphrase", params={}), AttackChoice(name="quantize", params={"schemes": ["int8"]})],
            Thresholds.model_validate({}),
            lambda stage, fraction: stages.append((stage, fraction)),
        )
    assert [a.name for a in audited] == ["quantize"]
    assert [s.name for s in skipped] == ["paraphrase"] and "paraphrased_question" in skipped[0].reason
    assert stages[-1] == ("attack:quantize", 1.0) and [f for _, f in stages] == sorted(f for _, f in stages)


def test_diagnostics_run_apart_and_are_never_judged(tiny_base: LoadedLM, saved_adapter) -> None:
    directory, before = saved_adapter
    rows = [QARow(question=r["question"], answer=r["answer"]) for r in synthetic_qa_rows(8, seed=0)]
    restore = AttackChoice(name="restore", params={"components": ["value_vectors"], "window": 1})
    stages: list[tuple[str, float]] = []
    patch = AttackChoice(name="patch", params={"layers": [0], "window": 1, "components": ["attention_output"]})
    with opened_adapter(tiny_base, directory, before) as peft_lm:
        ctx = audit_context(tiny_base, peft_lm, before, rows[:4], rows[4:], {}, 4, 0, finetuned=False)
        with pytest.raises(ValueError, match="restore is a diagnostic"):
            run_audit(ctx, [restore], Thresholds.model_validate({}), lambda _stage, _fraction: None)
        with pytest.raises(ValueError, match="quantize is an attack"):
            run_diagnostics(ctx, [AttackChoice(name="quantize", params={})], lambda _stage, _fraction: None)
        done, skipped = run_diagnostics(ctx, [restore, patch], lambda stage, fraction: stages.append((stage, fraction)))
    assert [d.name for d in done] == ["restore", "patch"] and skipped == []
    assert [v.name for v in done[0].outcome.variants] == ["value_vectors@0-0", "value_vectors@1-1"]
    assert [v.name for v in done[1].outcome.variants] == ["attention_output@0-0"]
    assert not hasattr(done[0], "judgement")
    assert stages[-1] == ("diagnostic:patch", 1.0) and [f for _, f in stages] == sorted(f for _, f in stages)
    assert ctx.control is None  # no fine-tune: no never-learned control


def test_after_a_fine_tune_the_control_is_the_base_lm_exactly(tiny_base: LoadedLM, saved_adapter) -> None:
    directory, before = saved_adapter
    # A "fine-tuned" adapter before forgetting: B matrices away from zero, so before differs from the base LM.
    generator = torch.Generator().manual_seed(0)
    finetuned = {name: t + 0.5 * torch.randn(t.shape, generator=generator) for name, t in before.items()}
    rows = [QARow(question=r["question"], answer=r["answer"]) for r in synthetic_qa_rows(8, seed=0)]
    ids = tiny_base.tokenizer("Question: what is it?\nAnswer:", return_tensors="pt").input_ids
    with opened_adapter(tiny_base, directory, finetuned) as peft_lm:
        ctx = audit_context(tiny_base, peft_lm, finetuned, rows[:4], rows[4:], {}, 4, 0, finetuned=True)
        assert ctx.control is not None
        assert all(torch.count_nonzero(t) == 0 for name, t in ctx.control.items() if ".lora_B." in name)
        assert all(torch.equal(t, finetuned[name]) for name, t in ctx.control.items() if ".lora_A." in name)
        with torch.no_grad(), ctx.control_lm() as control:
            control_logits = control(ids).logits
            with control.disable_adapter():
                base_logits = control(ids).logits
        with torch.no_grad(), ctx.before_lm() as before_lm:
            before_logits = before_lm(ids).logits
    assert torch.allclose(control_logits, base_logits, atol=1e-6)
    assert not torch.allclose(before_logits, base_logits, atol=1e-3)


def test_an_audit_leaves_the_base_lm_as_it_found_it_even_one_that_fails_half_way(
    tiny_base: LoadedLM, saved_adapter
) -> None:
    """The adapter is attached to the base LM itself; after an audit, whole or stopped in the middle of a quantized
    pass (as the job's time limit stops it), the base LM has the same weights, bit for bit, and no LoRA layer."""
    directory, before = saved_adapter
    weights = {name: t.clone() for name, t in tiny_base.lm.state_dict().items()}
    rows = [QARow.from_dict(r) for r in synthetic_qa_rows(8, seed=0)]
    attacks = [
        AttackChoice(name="quantize", params={"schemes": ["int8", "int4"], "group_size": 8}),
        AttackChoice(name="relearn", params={"examples": [2], "steps": 2}),
        AttackChoice(name="paraphrase", params={}),
    ]
    with opened_adapter(tiny_base, directory, before) as peft_lm:
        ctx = audit_context(tiny_base, peft_lm, before, rows[:4], rows[4:], {}, 4, 0, finetuned=False)
        audited, _ = run_audit(ctx, attacks, Thresholds.model_validate({}), lambda _stage, _fraction: None)
    assert [a.name for a in audited] == ["quantize", "relearn", "paraphrase"]
    assert_pristine(tiny_base.lm, weights)

    forwards = 0

    def stop_in_the_third_pass(_module: torch.nn.Module, _args: tuple) -> None:
        nonlocal forwards
        forwards += 1
        if forwards == 3:  # quantize's passes: before, forgotten (both unquantized), then the int8 ones
            raise RuntimeError("the job's time limit")

    with pytest.raises(RuntimeError, match="time limit"), opened_adapter(tiny_base, directory, before) as peft_lm:
        q_proj = peft_lm.base_model.model.model.layers[1].self_attn.q_proj.base_layer
        handle = q_proj.register_forward_pre_hook(stop_in_the_third_pass)
        try:
            ctx = audit_context(tiny_base, peft_lm, before, rows[:4], rows[4:], {}, 4, 0, finetuned=False)
            run_audit(ctx, attacks, Thresholds.model_validate({}), lambda _stage, _fraction: None)
        finally:
            handle.remove()
    assert forwards == 3
    assert_pristine(tiny_base.lm, weights)


def test_the_probe_runs_first_and_results_keep_the_requested_order(forgotten_context: AuditContext) -> None:
    ctx = dataclasses.replace(forgotten_context)  # a reference cache of its own
    stages: list[str] = []
    audited, skipped = run_audit(
        ctx,
        [AttackChoice(name="quantize", params={"schemes": ["int8"]}), AttackChoice(name="probe", params={})],
        Thresholds.model_validate({}),
        lambda stage, _fraction: stages.append(stage) if stage not in stages else None,
    )
    assert stages == ["attack:probe", "attack:quantize"]
    assert [a.name for a in audited] == ["quantize", "probe"] and skipped == []


def test_restore_and_patch_share_the_passes_they_measure_against(forgotten_context: AuditContext) -> None:
    """The passes before forgetting and of the forgotten LM run once per audit, and sharing them changes no KRS."""
    restore = AttackChoice(name="restore", params={"window": 1, "components": ["mlp"]})
    patch = AttackChoice(name="patch", params={"window": 1, "components": ["attention_output"]})
    head = forgotten_context.peft_lm.get_output_embeddings()

    def run(choices: list[AttackChoice]) -> tuple[list[dict[str, Any]], int]:
        calls = []
        handle = head.register_forward_pre_hook(lambda _module, _args: calls.append(1))
        try:
            done, _ = run_diagnostics(dataclasses.replace(forgotten_context), choices, lambda _stage, _fraction: None)
        finally:
            handle.remove()
        krs = [{v.name: v.krs.value if v.krs else None for v in d.outcome.variants} for d in done]
        return krs, len(calls)

    (restore_alone,), restore_calls = run([restore])
    (patch_alone,), patch_calls = run([patch])
    together, together_calls = run([restore, patch])
    assert together == [restore_alone, patch_alone]
    # A pass is one call per scoring batch: patch alone made the two baseline passes it shares with restore.
    batches = -(-len(forgotten_context.forget_train) // forgotten_context.batch_size)
    assert together_calls == restore_calls + patch_calls - 2 * batches
