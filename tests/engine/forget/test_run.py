import pytest
import torch
from pydantic import ValidationError
from scipy.stats import binomtest, ks_2samp

from lethe.registry import UnknownNameError
from lethe.rows import ChoiceRow, QARow, chance, split_heldout
from lethe.specs import FinetuneSpec
from tests.tiny_lm import synthetic_choice_rows, synthetic_qa_rows
from worker.engine.forget.run import ForgetOutcome, ForgetPlan, run_forget
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.lm.lora import attached_lora
from worker.engine.metrics.choice_scores import score_choices
from worker.engine.metrics.values import CurvePoint, MetricValue

FORGET_TRAIN, FORGET_HELDOUT = split_heldout(
    [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(128, seed=0)], 0.25, seed=0
)
RETAIN = {"more": [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(32, seed=99)]}
SPLITS = {"forget_train", "forget_heldout", "retain:more"}
FINETUNE = FinetuneSpec(epochs=10, learning_rate=1e-2)
TOLERANCE = 0.1
STAGES = {"evaluating", "finetuning", "forgetting", "probing"}


class Run:
    def __init__(self, base: LoadedLM, plan: ForgetPlan) -> None:
        self.progress: list[tuple[str, float]] = []
        self.outcome: ForgetOutcome = run_forget(
            base, plan, FORGET_TRAIN, FORGET_HELDOUT, RETAIN, lambda stage, f: self.progress.append((stage, f))
        )

    def metrics(self, **where) -> list[MetricValue]:
        return [m for m in self.outcome.metrics if all(getattr(m, k) == v for k, v in where.items())]

    def value(self, stage: str, split: str, name: str, layer: int | None = None) -> float:
        [metric] = self.metrics(stage=stage, split=split, name=name, layer=layer)
        return metric.value

    def curve(self, split: str) -> list[CurvePoint]:
        return [p for p in self.outcome.curves if p.split == split]


def plan(method: str, probe: bool, finetune: FinetuneSpec | None = FINETUNE, **params) -> ForgetPlan:
    params = {"learning_rate": 1e-3, "batch_size": 16, "target_tolerance": TOLERANCE} | params
    return ForgetPlan(method=method, method_params=params, finetune=finetune, probe=probe, seed=0)


@pytest.fixture(scope="module")
def random_label(tiny_base: LoadedLM) -> Run:
    return Run(tiny_base, plan("random_label", probe=True, epochs=60))


@pytest.fixture(scope="module")
def gradient_ascent(tiny_base: LoadedLM) -> Run:
    return Run(tiny_base, plan("gradient_ascent", probe=False, epochs=30))


@pytest.mark.parametrize("run_name", ["random_label", "gradient_ascent"])
def test_finetuning_teaches_the_task(run_name: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(run_name)
    base = run.value("base", "forget_train", "accuracy")
    finetuned = run.value("finetuned", "forget_train", "accuracy")
    assert finetuned >= 0.85
    assert finetuned >= base + 0.3
    assert run.value("finetuned", "forget_heldout", "accuracy") >= 0.85


def test_random_label_brings_forget_train_accuracy_to_chance(random_label: Run) -> None:
    after = random_label.value("forgotten", "forget_train", "accuracy")
    forgetting = random_label.outcome.forgetting
    assert forgetting.stop_reason == "target" and forgetting.target_reached
    assert forgetting.target == pytest.approx(chance(FORGET_TRAIN) + TOLERANCE)
    assert forgetting.score == after and "reached its target" in forgetting.summary()
    assert abs(after - chance(FORGET_TRAIN)) <= TOLERANCE
    # The per-epoch checks form the forgetting curve; the run stopped at the first one at chance.
    checks = random_label.curve("forget_train")
    assert {p.name for p in checks} == {"accuracy"}
    steps = [p.step for p in checks]
    assert steps == sorted(set(steps)) and len(steps) >= 2
    assert checks[-1].step == forgetting.steps
    assert all(p.value > chance(FORGET_TRAIN) + TOLERANCE for p in checks[:-1])
    # Every tracked split has its curve, measured at the same steps.
    for split in SPLITS:
        assert [p.step for p in random_label.curve(split)] == steps


def test_gradient_ascent_lowers_forget_train_accuracy(gradient_ascent: Run) -> None:
    finetuned = gradient_ascent.value("finetuned", "forget_train", "accuracy")
    after = gradient_ascent.value("forgotten", "forget_train", "accuracy")
    assert after <= finetuned - 0.3
    assert gradient_ascent.outcome.forgetting.stop_reason == "target"


def test_accuracy_and_forget_gap_at_every_stage_and_split(random_label: Run) -> None:
    for stage in ("base", "finetuned", "forgotten"):
        for split in SPLITS:
            accuracy = random_label.value(stage, split, "accuracy")
            assert 0 <= accuracy <= 1
            rows = {"forget_train": FORGET_TRAIN, "forget_heldout": FORGET_HELDOUT}.get(split, RETAIN["more"])
            assert random_label.value(stage, split, "forget_gap") == pytest.approx(accuracy - chance(rows))
    assert {m.stage for m in random_label.outcome.metrics} == {"base", "finetuned", "forgotten"}
    assert {m.split for m in random_label.outcome.metrics} == SPLITS


def test_forget_ratio_is_relative_to_the_stage_before_forgetting(random_label: Run) -> None:
    for split in SPLITS:
        before = random_label.value("finetuned", split, "accuracy")
        after = random_label.value("forgotten", split, "accuracy")
        chance_accuracy = before - random_label.value("finetuned", split, "forget_gap")
        assert random_label.value("forgotten", split, "forget_ratio") == pytest.approx(
            (before - after) / (before - chance_accuracy)
        )
    assert not random_label.metrics(name="forget_ratio", stage="finetuned")


def test_probe_accuracy_per_layer_before_and_after_forgetting(random_label: Run, tiny_base: LoadedLM) -> None:
    n_layers = tiny_base.lm.config.num_hidden_layers + 1
    for stage in ("finetuned", "forgotten"):
        probes = random_label.metrics(stage=stage, name="probe_accuracy")
        assert len(probes) == n_layers and {m.layer for m in probes} == set(range(n_layers))
        assert all(m.split == "forget_heldout" and 0 <= m.value <= 1 for m in probes)
    assert not random_label.metrics(stage="base", name="probe_accuracy")


def test_progress_is_monotone_and_ends_at_one(random_label: Run) -> None:
    fractions = [f for _, f in random_label.progress]
    assert all(0 <= f <= 1 for f in fractions)
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert {stage for stage, _ in random_label.progress} == STAGES


def test_the_cached_base_lm_stays_pristine(
    random_label: Run, tiny_base: LoadedLM, tiny_lm_dir, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not any("lora" in name for name, _ in tiny_base.lm.named_modules())
    monkeypatch.setenv("LETHE_PRECISION", "fp32")  # the weights as saved
    on_disk = load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path).lm.state_dict()
    for name, tensor in tiny_base.lm.state_dict().items():
        # As loaded: the blocks' linear weights rounded to bf16 where loaded under bf16 autocast (lm/block_weights.py).
        assert torch.equal(tensor, on_disk[name].to(tensor.dtype)), name
    assert random_label.outcome.adapter.state and all(".lora_" in name for name in random_label.outcome.adapter.state)


def test_without_finetune_the_base_stage_comes_before_forgetting(tiny_base: LoadedLM) -> None:
    first = Run(tiny_base, plan("gradient_ascent", probe=True, finetune=None, max_steps=2, stop_at_target=False))
    assert {m.stage for m in first.outcome.metrics} == {"base", "forgotten"}
    assert (first.outcome.forgetting.steps, first.outcome.forgetting.stop_reason) == (2, "max_steps")
    assert len(first.metrics(stage="base", name="probe_accuracy")) == tiny_base.lm.config.num_hidden_layers + 1
    for split in SPLITS:
        headroom = first.value("base", split, "forget_gap")
        assert bool(first.metrics(stage="forgotten", split=split, name="forget_ratio")) == (headroom > 0)
    assert "finetuning" not in {stage for stage, _ in first.progress}
    # The base LM may have seen the rows before: PrivLeak is named as a comparison with it, not MUSE's.
    privacy = {m.name for m in first.metrics(stage="forgotten", split="forget_train") if m.name.startswith("privleak")}
    assert privacy and all(name.startswith("privleak_vs_base_") for name in privacy)
    assert not first.metrics(stage="base", name="privleak_vs_base_loss")
    # Same plan, same seed: same numbers.
    second = Run(tiny_base, plan("gradient_ascent", probe=True, finetune=None, max_steps=2, stop_at_target=False))
    assert second.outcome.metrics == first.outcome.metrics
    assert second.outcome.curves == first.outcome.curves


def test_unknown_methods_and_bad_params_fail_before_any_work(tiny_base: LoadedLM) -> None:
    calls: list[tuple[str, float]] = []

    def record(stage: str, fraction: float) -> None:
        calls.append((stage, fraction))

    with pytest.raises(UnknownNameError):
        run_forget(tiny_base, plan("npo_typo", probe=False), FORGET_TRAIN, FORGET_HELDOUT, {}, record)
    with pytest.raises(ValidationError):
        run_forget(tiny_base, plan("random_label", probe=False, epochs=0), FORGET_TRAIN, FORGET_HELDOUT, {}, record)
    with pytest.raises(ValueError):
        run_forget(tiny_base, plan("random_label", probe=False), FORGET_TRAIN, [], {}, record)
    assert calls == []


def test_utility_floor_stops_and_restores_the_best_checkpoint_that_kept_it(tiny_base: LoadedLM) -> None:
    # Retain is the same task, so ascending on forget-train drags retain down with it: the floor must trip.
    floor = 0.1
    run = Run(
        tiny_base,
        plan("gradient_ascent", probe=False, learning_rate=1e-2, epochs=20, evaluate_every=1, utility_floor=floor),
    )
    assert run.outcome.forgetting.stop_reason == "utility_floor"
    points = run.curve("retain:more")
    assert [p.step for p in points] == list(range(1, len(points) + 1))
    before = run.value("finetuned", "retain:more", "accuracy")
    assert points[-1].value < before - floor  # the evaluation that broke the floor
    # The stored LM is the most-forgotten checkpoint that kept the floor, not the last one.
    after = run.value("forgotten", "retain:more", "accuracy")
    assert after >= before - floor
    kept = [p for p in points[:-1] if p.value >= before - floor]
    train_curve = {p.step: p.value for p in run.curve("forget_train")}
    best = min([run.value("finetuned", "forget_train", "accuracy")] + [train_curve[p.step] for p in kept])
    assert run.value("forgotten", "forget_train", "accuracy") == pytest.approx(best)
    # The floor restored an earlier checkpoint: whether the target is reached is judged on it, not on the last step.
    forgetting = run.outcome.forgetting
    assert forgetting.score == run.value("forgotten", "forget_train", "accuracy")
    assert forgetting.target_reached == (forgetting.score <= chance(FORGET_TRAIN) + TOLERANCE)


def test_every_stage_has_per_example_values_aligned_with_the_rows(random_label: Run) -> None:
    per_example = random_label.outcome.per_example
    assert set(per_example) == {"base", "finetuned", "forgotten"}
    for stage, splits in per_example.items():
        correct = splits["forget_train"]["correct"]
        assert len(correct) == len(FORGET_TRAIN)
        assert sum(v for v in correct if v is not None) / len(correct) == pytest.approx(
            random_label.value(stage, "forget_train", "accuracy")
        )
        assert len(splits["forget_heldout"]["mia_loss"]) == len(FORGET_HELDOUT)
        assert len(splits["retain:more"]["correct_probability"]) == len(RETAIN["more"])


def test_a_qa_run_stops_when_forget_train_is_no_better_known_than_unseen_rows(tiny_base: LoadedLM) -> None:
    rows = [QARow.from_dict(r) for r in synthetic_qa_rows(32, seed=5)]
    train, heldout = split_heldout(rows, 0.5, seed=0)
    qa_plan = ForgetPlan(
        method="npo",
        method_params={"learning_rate": 1e-2, "batch_size": 8, "epochs": 30, "target_tolerance": 0.02},
        finetune=FinetuneSpec(epochs=5, learning_rate=1e-2),
        probe=True,
        seed=0,
    )
    outcome = run_forget(tiny_base, qa_plan, train, heldout, RETAIN, lambda stage, f: None)
    metrics = {(m.stage, m.split, m.name, m.layer): m.value for m in outcome.metrics}
    assert len(metrics) == len(outcome.metrics)  # one value per key
    assert outcome.forgetting.stop_reason == "target" and outcome.forgetting.target_reached
    assert outcome.forgetting.metric == "answer_probability"
    target = metrics[("finetuned", "forget_heldout", "answer_probability", None)] + 0.02
    assert outcome.forgetting.target == pytest.approx(target)
    last = [p for p in outcome.curves if p.split == "forget_train"][-1]
    assert last.name == "answer_probability" and last.step == outcome.forgetting.steps and last.value <= target
    # The check that stopped forgetting scored the adapter that was kept: the stage metric is that value.
    assert metrics[("forgotten", "forget_train", "answer_probability", None)] == pytest.approx(last.value, abs=1e-6)
    assert (
        metrics[("forgotten", "forget_train", "answer_probability", None)]
        < metrics[("finetuned", "forget_train", "answer_probability", None)]
    )
    # The qa probe: true vs perturbed answer, per layer, before and after.
    assert {k[3] for k in metrics if k[2] == "probe_accuracy"} == set(range(tiny_base.lm.config.num_hidden_layers + 1))
    for name in ("truth_ratio", "rouge_l_recall", "extraction_strength", "exact_memorization", "privleak_loss"):
        assert ("forgotten", "forget_train", name, None) in metrics, name
    # The fine-tune introduced the rows, so the base LM never saw them: MUSE's PrivLeak, and TOFU's forget quality.
    assert not any(name.startswith("privleak_vs_base") for _, _, name, _ in metrics)
    per_example = outcome.per_example
    for stage in ("finetuned", "forgotten"):
        ratios = [r for r in per_example[stage]["forget_train"]["truth_ratio_raw"] if r is not None]
        reference = [r for r in per_example["base"]["forget_train"]["truth_ratio_raw"] if r is not None]
        assert len(ratios) == len(reference) == len(train)
        [quality] = [m for m in outcome.metrics if (m.stage, m.name) == (stage, "forget_quality")]
        assert quality.split == "forget_train" and quality.n == len(train)
        assert quality.value == pytest.approx(ks_2samp(ratios, reference).pvalue)
        # max(0, 1 − R) per row is the truth_ratio metric's value: the KS test saw the raw R.
        clipped = per_example[stage]["forget_train"]["truth_ratio"]
        assert clipped == pytest.approx([max(0.0, 1 - r) for r in ratios])
    assert metrics[("base", "forget_train", "mia_auc_loss", None)] is not None
    assert not [m for m in outcome.metrics if m.stage == "base" and m.name in ("forget_quality", "privleak_loss")]
    # The fine-tuned LM prefers every true answer: its ratios differ plainly from the base LM's.
    assert metrics[("finetuned", "forget_train", "forget_quality", None)] < 0.01
    # MIA AUCs and PrivLeak carry their rows and an interval around the value.
    for m in outcome.metrics:
        if m.name.startswith(("mia_auc", "privleak")):
            assert m.n == len(train) + len(heldout), m
            if m.ci_low is not None and m.ci_high is not None:
                assert m.ci_low <= m.value <= m.ci_high, m
    assert all(m.ci_low is not None for m in outcome.metrics if m.name.startswith("mia_auc"))

    # qa means carry a bootstrap interval over the rows they apply to, around their value (of width 0 only where
    # every row has the same value, as a ROUGE of 0 on an untrained LM).
    for m in outcome.metrics:
        if m.name in ("answer_probability", "rouge_l_recall", "exact_memorization"):
            assert m.n == len(train if m.split == "forget_train" else heldout), m
            assert m.ci_low is not None and m.ci_high is not None and m.ci_low <= m.value <= m.ci_high, m
            assert m.ci_low < m.ci_high or m.name != "answer_probability", m


@pytest.mark.parametrize("run_name", ["random_label", "gradient_ascent"])
def test_one_metric_per_stage_split_name_and_layer(run_name: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(run_name)
    keys = [(m.stage, m.split, m.name, m.layer) for m in run.outcome.metrics]
    assert len(keys) == len(set(keys))
    # The curve is apart: several points per split, none of them a stage metric.
    assert len(run.curve("forget_train")) >= 2
    assert all(p.step >= 1 for p in run.outcome.curves)


def test_the_forgotten_metrics_are_a_rescoring_of_the_returned_lm(gradient_ascent: Run, tiny_base: LoadedLM) -> None:
    rows = {"forget_train": FORGET_TRAIN, "forget_heldout": FORGET_HELDOUT, "retain:more": RETAIN["more"]}
    adapter = gradient_ascent.outcome.adapter
    with attached_lora(tiny_base.lm, adapter.config, adapter.state) as peft_lm:
        peft_lm.eval()
        for split, split_rows in rows.items():
            scores = score_choices(peft_lm, tiny_base.tokenizer, split_rows, batch_size=7)
            assert gradient_ascent.value("forgotten", split, "accuracy") == pytest.approx(scores.accuracy), split
            per_example = gradient_ascent.outcome.per_example["forgotten"][split]["correct"]
            assert per_example == [float(c) for c in scores.correct]


@pytest.mark.parametrize("run_name", ["random_label", "gradient_ascent"])
def test_accuracy_intervals_are_wilsons_from_the_stored_per_example_values(
    run_name: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(run_name)
    checked = 0
    for stage, splits in run.outcome.per_example.items():
        for split, values in splits.items():
            correct = [int(v) for v in values["correct"] if v is not None]
            interval = binomtest(sum(correct), len(correct)).proportion_ci(method="wilson")
            [accuracy] = run.metrics(stage=stage, split=split, name="accuracy")
            assert accuracy.n == len(correct)
            assert accuracy.ci_low == pytest.approx(interval.low, abs=1e-12)
            assert accuracy.ci_high == pytest.approx(interval.high, abs=1e-12)
            checked += 1
    assert checked == len(run.outcome.per_example) * len(SPLITS)


def test_probe_accuracy_and_forget_ratio_carry_intervals(random_label: Run) -> None:
    for probe in random_label.metrics(name="probe_accuracy"):
        assert probe.n == len(FORGET_HELDOUT)
        interval = binomtest(round(probe.value * probe.n), probe.n).proportion_ci(method="wilson")
        assert (probe.ci_low, probe.ci_high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    for ratio in random_label.metrics(name="forget_ratio"):
        assert ratio.n is not None and ratio.ci_low is not None and ratio.ci_high is not None
        assert ratio.ci_low <= ratio.value <= ratio.ci_high


def test_a_run_stopped_by_its_budget_above_the_target_says_so(tiny_base: LoadedLM) -> None:
    # Fine-tuned to know the task, then one tiny step: forget-train stays far above chance + tolerance.
    run = Run(tiny_base, plan("gradient_ascent", probe=False, max_steps=1, learning_rate=1e-6))
    forgetting = run.outcome.forgetting
    assert (forgetting.stop_reason, forgetting.steps) == ("max_steps", 1)
    assert forgetting.score == run.value("forgotten", "forget_train", "accuracy") > forgetting.target
    assert not forgetting.target_reached
    summary = forgetting.summary()
    assert "did NOT reach its target" in summary and "step budget" in summary
    assert f"{forgetting.score:.3f}" in summary and f"{forgetting.target:.3f}" in summary
    # Nothing rose: one step at a tiny rate leaves the scores within their intervals.
    assert forgetting.rose == ()


def test_forget_quality_needs_a_finetune_and_perturbed_answers(tiny_base: LoadedLM) -> None:
    rows = [QARow.from_dict(r) for r in synthetic_qa_rows(12, seed=6)]
    train, heldout = split_heldout(rows, 0.5, seed=0)
    params = {"batch_size": 8, "max_steps": 1, "stop_at_target": False}

    def ignore(stage: str, fraction: float) -> None:
        pass

    # No fine-tune: the base LM is no never-learned reference.
    outcome = run_forget(tiny_base, ForgetPlan("gradient_ascent", params, None, False, 0), train, heldout, {}, ignore)
    names = {m.name for m in outcome.metrics}
    assert "forget_quality" not in names and "privleak_loss" not in names
    assert {"privleak_vs_base_loss", "truth_ratio", "truth_ratio_open_unlearning"} <= names
    # A fine-tune, but no row with perturbed answers: no truth ratio to compare.
    bare = [QARow(row.question, row.answer) for row in train], [QARow(row.question, row.answer) for row in heldout]
    finetune = FinetuneSpec(epochs=1, learning_rate=1e-2)
    outcome = run_forget(tiny_base, ForgetPlan("gradient_ascent", params, finetune, False, 0), *bare, {}, ignore)
    names = {m.name for m in outcome.metrics}
    assert "forget_quality" not in names and "truth_ratio" not in names and "privleak_loss" in names
