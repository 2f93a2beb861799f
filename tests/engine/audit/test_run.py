"""Opening a stored adapter for an audit (safetensors only, the same adapter before forgetting) and running attacks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lethe.attacks import Thresholds
from lethe.rows import QARow
from lethe.specs import AttackChoice
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.run import audit_context, open_adapter, run_audit
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora, lora_state


@pytest.fixture
def saved_adapter(tiny_base: LoadedLM, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A LoRA adapter saved with peft (safetensors) and its state before training (B = 0)."""
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    before = lora_state(peft_lm)
    with torch.no_grad():
        for name, parameter in peft_lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    peft_lm.save_pretrained(str(tmp_path), safe_serialization=True)
    return tmp_path, before


def test_open_adapter_loads_the_saved_weights(tiny_base: LoadedLM, saved_adapter) -> None:
    directory, before = saved_adapter
    peft_lm = open_adapter(tiny_base, directory, before)
    assert not peft_lm.training
    assert any(not torch.equal(value, before[name]) for name, value in lora_state(peft_lm).items())


def test_open_adapter_refuses_pickles_and_a_foreign_before_state(tiny_base: LoadedLM, saved_adapter) -> None:
    directory, before = saved_adapter
    (directory / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"pickled files \(adapter_model.bin\)"):
        open_adapter(tiny_base, directory, before)
    (directory / "adapter_model.bin").unlink()
    with pytest.raises(ValueError, match="not the same adapter"):
        open_adapter(tiny_base, directory, dict(list(before.items())[1:]))
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no adapter_model.safetensors"):
        open_adapter(tiny_base, directory, before)


def test_run_audit_skips_an_attack_with_nothing_to_measure(tiny_base: LoadedLM, saved_adapter) -> None:
    directory, before = saved_adapter
    rows = [QARow(question=r["question"], answer=r["answer"]) for r in synthetic_qa_rows(8, seed=0)]  # no paraphrase
    ctx = audit_context(tiny_base, open_adapter(tiny_base, directory, before), before, rows[:4], rows[4:], {}, 4, 0)
    stages: list[tuple[str, float]] = []
    audited, skipped = run_audit(
        ctx,
        [AttackChoice(name="paraphrase", params={}), AttackChoice(name="quantize", params={"schemes": ["int8"]})],
        Thresholds.model_validate({}),
        lambda stage, fraction: stages.append((stage, fraction)),
    )
    assert [a.name for a in audited] == ["quantize"]
    assert [s.name for s in skipped] == ["paraphrase"] and "paraphrased_question" in skipped[0].reason
    assert stages[-1] == ("attack:quantize", 1.0) and [f for _, f in stages] == sorted(f for _, f in stages)
