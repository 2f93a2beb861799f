import json

import pytest

from bench.audit_bench import AuditedJob, demo_job, full_audit, measure
from lethe.attacks import ATTACKS, default_attacks
from lethe.rows import ChoiceRow, split_heldout
from lethe.specs import FinetuneSpec
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget.run import ForgetPlan
from worker.engine.lm.load import LoadedLM


def test_the_demo_job_is_the_demo_request_on_the_demo_files() -> None:
    job = demo_job()
    # 96 PIQA rows, half held out; ARC-Easy retained under its dataset name.
    assert (len(job.forget_train), len(job.forget_heldout)) == (48, 48)
    assert list(job.retain) == ["arc_easy"] and len(job.retain["arc_easy"]) == 32
    assert job.plan.method == "random_label" and job.plan.probe and job.plan.seed == 0
    assert job.plan.finetune == FinetuneSpec(epochs=4, learning_rate=0.001)
    # The request does not turn general-text perplexity off, and the API's default is on.
    assert job.general_text


def test_a_full_audit_is_every_attack_that_applies() -> None:
    audit = full_audit("text", has_retain=False)
    reasons = {entry["name"]: entry["reason"] for entry in audit.not_applicable}
    assert reasons == {
        "probe": "probe does not apply to a text forget set (it supports: choice, qa)",
        "paraphrase": "paraphrase does not apply to a text forget set (it supports: choice, qa)",
        "in_context": "in_context does not apply to a text forget set (it supports: choice, qa)",
        "trigger": "trigger needs the forget job to have had retain datasets",
    }
    assert audit.attacks == default_attacks("text", has_retain=False)  # what POST /v1/audits runs
    assert sorted(audit.attacks + list(reasons)) == sorted(ATTACKS.names())
    # A choice forget set with retain data: every registered attack applies.
    choice = full_audit("choice", has_retain=True)
    assert choice.not_applicable == [] and sorted(choice.attacks) == sorted(ATTACKS.names())


def test_measure_times_a_forget_job_and_its_audit(tiny_base: LoadedLM) -> None:
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(40, seed=0)]
    forget_train, forget_heldout = split_heldout(rows[:24], 0.5, seed=0)
    job = AuditedJob(
        plan=ForgetPlan(
            method="random_label",
            method_params={"learning_rate": 1e-2, "batch_size": 8, "epochs": 3},
            finetune=FinetuneSpec(epochs=3, learning_rate=1e-2),
            probe=True,
            seed=0,
        ),
        forget_train=forget_train,
        forget_heldout=forget_heldout,
        retain={"more": rows[24:]},
        general_text=[],
    )
    result = measure(tiny_base, job)
    json.dumps(result)

    assert result["forget_seconds"] > 0 and result["audit_seconds"] > 0
    assert result["ratio"] == pytest.approx(result["audit_seconds"] / result["forget_seconds"])
    # The forget job ran before the audit and again after it; its time is their mean, its stages the first run's.
    first, second = result["forget_seconds_runs"]
    assert first > 0 and second > 0
    assert result["forget_seconds"] == pytest.approx((first + second) / 2)
    assert sum(result["forget_seconds_by_stage"].values()) == pytest.approx(first)
    assert result["peak_rss_mb"] >= result["peak_rss_after_forget_mb"]
    assert {"evaluating", "finetuning", "forgetting", "probing"} == set(result["forget_seconds_by_stage"])
    assert set(result["forget_peak_rss_by_stage_mb"]) == set(result["forget_seconds_by_stage"])
    # Every registered attack either ran (in the registry's order, the judged attacks first and the diagnostics
    # after them) or is listed with the reason it did not.
    attacks = result["attacks"]
    ran = [attack["name"] for attack in attacks]
    in_order = sorted(ATTACKS.names(), key=lambda name: ATTACKS.get(name).diagnostic)
    assert ran == [name for name in in_order if name in ran]
    assert result["not_applicable"] == []
    assert sorted(ran) == sorted(ATTACKS.names())
    assert sum(a["seconds"] for a in attacks) == pytest.approx(result["audit_seconds"])
    for attack in attacks:
        assert attack["seconds"] > 0 and attack["load_average"] >= 0
        # The resident set while it ran, sampled: up to the process's peak (VmHWM, the kernel's high-water mark,
        # which it updates lazily: a sample can pass it by a few pages).
        assert 0 < attack["peak_rss_mb"] <= result["peak_rss_mb"] + 16
        if "skipped" in attack:
            assert attack["skipped"]
            continue
        if attack.get("diagnostic"):
            # Restore and patch are never judged: a KRS per component and window, no verdict.
            assert "verdict" not in attack and attack["metric"] == "krs" and attack["variants"]
            continue
        assert attack["verdict"] in ("robust", "shallow", "inconclusive")
        assert attack["worst_variant"] in [variant["name"] for variant in attack["variants"]]
        for key in ("before", "after_forgetting", "after_attack"):
            assert 0 <= attack[key] <= 1
        assert attack["recovery"] is None or 0 <= attack["recovery"] <= 1
    assert result["verdict"] in ("robust", "shallow", "inconclusive")
    assert result["splits"] == {"forget_train": 12, "forget_heldout": 12, "retain:more": 16, "general_text": 0}
    assert 0 < result["peak_rss_after_forget_mb"] <= result["peak_rss_mb"]
