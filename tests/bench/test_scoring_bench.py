import json
from pathlib import Path

import numpy as np
import pytest

from bench.scoring_bench import ScoringRun, block_dtype, fastest_at_parity, lethe_lms, summarize
from bench.tasks import TASKS, write_lmeval_task
from lethe.rows import ChoiceRow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.metrics.choice_scores import score_choices


def run(system: str, precision: str, seconds: float, accuracy: float, loglikelihoods=None) -> ScoringRun:
    return ScoringRun(
        system, precision, 16, seconds, 4, accuracy, 0.5, loglikelihoods or [[-1.0, -2.0], [-3.0, -1.0]] * 2
    )


def test_the_fastest_run_counts_only_at_accuracy_parity() -> None:
    runs = [run("lethe", "fp32", 4.0, 0.75), run("lethe", "bf16", 1.0, 0.70), run("lethe", "bf16", 2.0, 0.7525)]
    assert fastest_at_parity(runs, reference_accuracy=0.75).seconds == 2.0
    with pytest.raises(RuntimeError):
        fastest_at_parity(runs, reference_accuracy=0.5)


def test_summary_takes_each_sides_best_run_of_its_fastest_setting_at_parity() -> None:
    reference = run("lm-eval", "fp32", 8.0, 0.75)
    sweep = [
        reference,
        run("lm-eval", "bf16 weights", 1.0, 0.5),  # faster, but lost accuracy: never the baseline
        run("lm-eval", "bf16 autocast", 4.0, 0.75),
        run("lethe", "bf16 autocast", 2.0, 0.75, [[-1.1, -2.0], [-3.0, -1.0]] * 2),
    ]
    finals = [run("lm-eval", "bf16 autocast", 3.0, 0.75), run("lethe", "bf16 autocast", 2.5, 0.75)]
    summary = summarize(sweep, finals, reference, "arc_easy")
    assert summary["lmeval_setting"] == {"precision": "bf16 autocast", "batch_size": 16}
    assert summary["lmeval_rows_per_s"] == pytest.approx(4 / 3.0)
    assert summary["lethe_rows_per_s"] == pytest.approx(4 / 2.0)
    assert summary["speedup"] == pytest.approx(1.5)
    assert summary["accuracy_delta_pts"] == 0.0
    assert summary["lethe_vs_lmeval_fp32"]["max_abs_loglikelihood_diff"] == pytest.approx(0.1)
    assert summary["lethe_vs_lmeval_fp32"]["prediction_agreement"] == 1.0
    assert [r["stage"] for r in summary["runs"]] == ["sweep"] * 4 + ["final"] * 2
    assert "loglikelihoods" not in summary["runs"][0]
    json.dumps(summary)


def test_summary_refuses_a_setting_whose_repeats_change_accuracy() -> None:
    reference = run("lm-eval", "fp32", 8.0, 0.75)
    sweep = [reference, run("lethe", "bf16 autocast", 2.0, 0.75)]
    with pytest.raises(RuntimeError):
        summarize(sweep, [run("lethe", "bf16 autocast", 2.0, 0.5)], reference, "arc_easy")


def test_lmeval_task_holds_the_same_strings(tmp_path) -> None:
    rows = [ChoiceRow("Question: 2 + 2?\nAnswer:", (" 4", " 5"), 0)]
    name = write_lmeval_task("rows", rows, tmp_path)
    yaml = (tmp_path / f"{name}.yaml").read_text()
    # The choices carry their own space, so lm-eval must not add another.
    assert 'target_delimiter: ""' in yaml and "doc_to_text" in yaml
    assert str(tmp_path / f"{name}.jsonl") in yaml
    record = json.loads((tmp_path / f"{name}.jsonl").read_text())
    assert record == {"prompt": rows[0].prompt, "choices": [" 4", " 5"], "answer": 0}


@pytest.mark.skipif(not TASKS["arc_easy"].source.is_file(), reason="shared datasets not beside the repository")
def test_bench_rows_use_lmevals_prompt() -> None:
    rows = TASKS["arc_easy"].rows(5)
    assert len(rows) == 5
    assert all(row.prompt.startswith("Question: ") and row.prompt.endswith("\nAnswer:") for row in rows)
    assert all(choice.startswith(" ") for row in rows for choice in row.choices)


def test_the_fp32_setting_scores_an_lm_whose_blocks_are_fp32(tiny_lm_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Where a worker stores the blocks in bf16, scoring its LM without autocast still computes them in bf16: the
    bench's fp32 setting scores a copy loaded as LETHE_PRECISION=fp32 loads it, and gets other numbers."""
    source = f"path:{tiny_lm_dir}"
    monkeypatch.setenv("LETHE_PRECISION", "bf16")  # as `auto` loads it on a CPU with native bf16
    worker_lm = load_base_lm("tiny", source, tmp_path)
    assert block_dtype(worker_lm) == "bfloat16"
    loaded: list[LoadedLM] = []

    def load_fp32() -> LoadedLM:
        monkeypatch.setenv("LETHE_PRECISION", "fp32")
        loaded.append(load_base_lm("tiny", source, tmp_path))
        return loaded[-1]

    lms = lethe_lms(worker_lm, load_fp32)
    assert lms["bf16 autocast"] is worker_lm and lms["fp32"] is loaded[0]
    assert block_dtype(lms["fp32"]) == "float32"
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(8, seed=1)]
    fp32 = score_choices(lms["fp32"].lm, lms["fp32"].tokenizer, rows, batch_size=4, bf16=False)
    bf16_blocks = score_choices(worker_lm.lm, worker_lm.tokenizer, rows, batch_size=4, bf16=False)
    assert np.abs(np.concatenate(fp32.loglikelihoods) - np.concatenate(bf16_blocks.loglikelihoods)).max() > 1e-4

    # An LM whose blocks are fp32 already serves both settings; nothing more is loaded.
    assert lethe_lms(loaded[0], lambda: pytest.fail("loaded a second copy")) == {
        "fp32": loaded[0],
        "bf16 autocast": loaded[0],
    }
