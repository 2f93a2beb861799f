"""Running an audit's attacks on an opened adapter."""

from __future__ import annotations

from lethe.attacks import Thresholds
from lethe.rows import QARow
from lethe.specs import AttackChoice
from tests.tiny_lm import synthetic_qa_rows
from worker.engine.audit.run import audit_context, run_audit
from worker.engine.lm.adapter import open_adapter
from worker.engine.lm.load import LoadedLM


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
