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
    assert {name for name, interval in by_interval.items() if interval == "paired_bootstrap"} == {"forget_ratio"}
    assert by_interval["perplexity"] == by_interval["answer_probability"] == "bootstrap"


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
