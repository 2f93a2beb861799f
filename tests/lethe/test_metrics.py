import subprocess
import sys

import pytest

from lethe.metrics import FAMILIES, INTERVALS, KINDS, METRICS, MetricSpec


def test_the_metric_registry_does_not_import_torch() -> None:
    code = "import sys, lethe.metrics; sys.exit('torch' in sys.modules or 'numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_metric_is_registered_with_a_valid_spec() -> None:
    assert set(METRICS) == {
        "accuracy",
        "forget_gap",
        "forget_ratio",
        "correct_probability",
        "probe_accuracy",
        "answer_probability",
        "rouge_l_recall",
        "truth_ratio",
        "truth_ratio_balance",
        "truth_ratio_open_unlearning",
        "truth_ratio_balance_open_unlearning",
        "forget_quality",
        "extraction_strength",
        "exact_memorization",
        "verbatim_memorization",
        "perplexity",
        "mia_auc_loss",
        "mia_auc_zlib",
        "mia_auc_min_k",
        "mia_auc_min_k_plus_plus",
        "privleak_loss",
        "privleak_zlib",
        "privleak_min_k",
        "privleak_min_k_plus_plus",
        "privleak_vs_base_loss",
        "privleak_vs_base_zlib",
        "privleak_vs_base_min_k",
        "privleak_vs_base_min_k_plus_plus",
        "text_probability",
    }
    for name, spec in METRICS.items():
        assert spec.name == name and set(spec.kinds) <= set(KINDS) and spec.family in FAMILIES
        assert spec.description and spec.interval in INTERVALS


def test_every_metric_says_which_interval_it_carries() -> None:
    by_interval = {name: spec.interval for name, spec in METRICS.items()}
    assert {name for name, interval in by_interval.items() if interval == "wilson"} == {
        "accuracy",
        "forget_gap",
        "probe_accuracy",
    }
    privleak = {
        f"privleak{vs}_{attack}" for vs in ("", "_vs_base") for attack in ("loss", "zlib", "min_k", "min_k_plus_plus")
    }
    assert {name for name, interval in by_interval.items() if interval == "paired_bootstrap"} == {
        "forget_ratio"
    } | privleak
    assert by_interval["perplexity"] == by_interval["answer_probability"] == by_interval["mia_auc_loss"] == "bootstrap"
    # A p-value has no interval.
    assert {name for name, interval in by_interval.items() if interval == "none"} == {"forget_quality"}


def test_privacy_and_tofu_metrics_say_what_they_measure_and_which_way_is_good() -> None:
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        mia = METRICS.get(f"mia_auc_{attack}")
        assert mia.higher_means == "remembers" and "only when the job's fine-tune introduced" in mia.description
        assert "stratified bootstrap" in mia.description
        # PrivLeak: 0 is the goal; a large positive value is over-unlearning, not better forgetting.
        for name in (f"privleak_{attack}", f"privleak_vs_base_{attack}"):
            leak = METRICS.get(name)
            assert leak.higher_means == "neutral" and leak.family == "privacy"
            assert "−100" in leak.description and "over-unlearned" in leak.description
            assert f"1 − mia_auc_{attack}" in leak.description and "paired" in leak.description
        assert "never saw them" in METRICS.get(f"privleak_{attack}").description
        assert "may have seen" in METRICS.get(f"privleak_vs_base_{attack}").description
    quality = METRICS.get("forget_quality")
    assert (quality.kinds, quality.family, quality.higher_means) == (("qa",), "qa", "forgets")
    assert "Kolmogorov–Smirnov" in quality.description and "fine-tuned" in quality.description
    # Each truth ratio names its source and formula.
    assert "arithmetic mean" in METRICS.get("truth_ratio").description
    assert "Eq. 1" in METRICS.get("truth_ratio_balance").description
    for name in ("truth_ratio_open_unlearning", "truth_ratio_balance_open_unlearning"):
        assert "geometric mean" in METRICS.get(name).description and "open-unlearning" in METRICS.get(name).description


def test_a_bad_spec_or_a_duplicate_is_refused() -> None:
    with pytest.raises(ValueError):
        MetricSpec("x", ("image",), "qa", "d", "remembers")
    with pytest.raises(ValueError):
        MetricSpec("x", ("qa",), "vision", "d", "remembers")
    with pytest.raises(ValueError):
        MetricSpec("x", ("qa",), "qa", "d", "up")
    with pytest.raises(ValueError, match="interval"):
        MetricSpec("x", ("qa",), "qa", "d", "remembers", "normal")
    with pytest.raises(ValueError):
        METRICS.register("accuracy", METRICS.get("accuracy"))
