"""Scoring choice rows: Lethe's score_choices against lm-evaluation-harness (in its own venv) on the same rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.machine import load_average
from bench.tasks import write_lmeval_task
from lethe.rows import ChoiceRow
from worker.engine.lm.block_weights import block_matmul_layers
from worker.engine.lm.load import LoadedLM
from worker.engine.metrics.choice_scores import score_choices
from worker.engine.precision import bf16_supported

# Accuracy parity: a configuration counts only if its accuracy is within this of lm-eval's fp32 accuracy.
ACCURACY_TOLERANCE_PTS = 0.5

# lm-eval's precision settings, HFLM dtype= (the weights) and mixed_precision_dtype= (autocast), and the batch
# sizes tried at each: its fp32 run is the accuracy reference, the bf16 ones are its fast settings.
LMEVAL_SETTINGS: dict[str, tuple[dict[str, str | None], list[int]]] = {
    "fp32": ({"dtype": "float32", "mixed_precision_dtype": None}, [16]),
    "bf16 weights": ({"dtype": "bfloat16", "mixed_precision_dtype": None}, [8, 16, 32]),
    "bf16 autocast": ({"dtype": "float32", "mixed_precision_dtype": "bfloat16"}, [8, 16, 32]),
}
# Lethe's: score_choices(bf16=...), with the batch sizes tried. Under bf16 autocast Lethe keeps the head in fp32.
# Each setting scores its own LM (`lethe_lms`): the fp32 one an LM whose blocks are stored in fp32.
LETHE_SETTINGS: dict[str, tuple[bool, list[int]]] = {"fp32": (False, [32, 64]), "bf16 autocast": (True, [16, 32, 64])}
# Lethe's LM for each of its settings.
LetheLMs = dict[str, LoadedLM]


def block_dtype(loaded: LoadedLM) -> str:
    """The dtype the decoder blocks' matmul weights are stored in, e.g. `float32`."""
    dtypes = {str(layer.weight.dtype).removeprefix("torch.") for layer in block_matmul_layers(loaded.lm)}
    return "/".join(sorted(dtypes))


def lethe_lms(base: LoadedLM, load_fp32: Callable[[], LoadedLM]) -> LetheLMs:
    """The LM each Lethe setting scores: `base` (as a worker loads it here) for bf16 autocast; for fp32, `base` if its
    blocks are stored in fp32, else `load_fp32()` (the LM as LETHE_PRECISION=fp32 loads it).

    Where the CPU computes bf16 natively a worker stores the decoder blocks' matmul weights in bf16
    (`lm/block_weights.py`), and outside autocast they still compute in bf16: scoring that LM with bf16=False is not
    fp32. The bench did just that from 2026-11-30 (when block weights came) to 2026-12-02, so the "fp32" rows of
    entries scored on such CPUs then timed bf16 blocks (the report says so beside them).
    """
    fp32 = base if block_dtype(base) == "float32" else load_fp32()
    if block_dtype(fp32) != "float32":
        raise RuntimeError(f"the fp32 setting's LM stores its blocks in {block_dtype(fp32)}, not float32")
    return {"fp32": fp32, "bf16 autocast": base}


@dataclass
class ScoringRun:
    """One timed scoring of all rows by one system at one setting."""

    system: str
    precision: str
    batch_size: int
    seconds: float
    rows: int
    accuracy: float
    load_average: float  # 1-minute load average when the run started (the machine is shared)
    loglikelihoods: list[list[float]]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def summary(self) -> dict:
        """The run without its per-choice log-likelihoods."""
        fields = asdict(self)
        del fields["loglikelihoods"]
        return fields | {"rows_per_s": self.rows_per_s}


def lethe_run(lms: LetheLMs, rows: list[ChoiceRow], precision: str, batch_size: int) -> ScoringRun:
    """One timed score_choices call, on the LM of that setting."""
    bf16 = LETHE_SETTINGS[precision][0]
    lm, tokenizer = lms[precision].lm, lms[precision].tokenizer
    load = load_average()
    started = time.perf_counter()
    scores = score_choices(lm, tokenizer, rows, batch_size, bf16=bf16)
    seconds = time.perf_counter() - started
    run = ScoringRun("lethe", precision, batch_size, seconds, len(rows), scores.accuracy, load, scores.loglikelihoods)
    print(f"  lethe {precision} batch {batch_size}: {run.rows_per_s:.2f} rows/s", file=sys.stderr)
    return run


def worth_running(precision: str) -> bool:
    """Whether to time a precision setting here: the bf16 ones only where the CPU computes bf16 natively (elsewhere
    bf16 is emulated, slower than fp32, and no user would pick it: timing it only spent the bench's minutes)."""
    return "bf16" not in precision or bf16_supported("cpu")


def lethe_sweep(lms: LetheLMs, rows: list[ChoiceRow]) -> list[ScoringRun]:
    """score_choices at every setting worth running here (after one small untimed call on each setting's LM, which
    warms the kernels)."""
    for precision, (bf16, _) in LETHE_SETTINGS.items():
        if worth_running(precision):
            score_choices(lms[precision].lm, lms[precision].tokenizer, rows[:4], 4, bf16=bf16)
    return [
        lethe_run(lms, rows, precision, batch_size)
        for precision, (_, batch_sizes) in LETHE_SETTINGS.items()
        if worth_running(precision)
        for batch_size in batch_sizes
    ]


class LmEval:
    """lm-eval's HFLM in its own venv, on the rows written as a local task."""

    def __init__(self, python: Path, model_dir: Path, rows: list[ChoiceRow], work_dir: Path) -> None:
        self.python, self.model_dir, self.work_dir = python, model_dir, work_dir
        self.task_dir = work_dir / "lmeval-tasks"
        self.task = write_lmeval_task("rows", rows, self.task_dir)
        # Everything is local: no hub or dataset look-ups.
        self.env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.env["HF_DATASETS_CACHE"] = str(work_dir / "hf-datasets")

    def runs(self, precision: str, batch_sizes: list[int]) -> list[ScoringRun]:
        """One subprocess (one model load and an untimed warm-up) timing each batch size once."""
        settings = LMEVAL_SETTINGS[precision][0]
        command = [
            str(self.python),
            str(Path(__file__).with_name("lmeval_runner.py")),
            f"--model-dir={self.model_dir}",
            f"--task-dir={self.task_dir}",
            f"--tasks={self.task}",
            f"--dtype={settings['dtype']}",
            f"--batch-sizes={','.join(map(str, batch_sizes))}",
        ]
        if settings["mixed_precision_dtype"]:
            command.append(f"--mixed-precision-dtype={settings['mixed_precision_dtype']}")
        log = self.work_dir / f"lmeval-{precision.replace(' ', '-')}.log"
        with log.open("w") as stderr:
            result = subprocess.run(command, env=self.env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"lm-eval ({precision}) failed with exit code {result.returncode}; see {log}")
        runs = []
        for run in json.loads(result.stdout)["lm_eval_runs"]:
            scored = run["tasks"][self.task]
            runs.append(
                ScoringRun(
                    "lm-eval",
                    precision,
                    run["batch_size"],
                    run["loglikelihood_seconds"],
                    scored["rows"],
                    scored["accuracy"],
                    run["load_average"],
                    scored["loglikelihoods"],
                )
            )
            print(f"  lm-eval {precision} batch {run['batch_size']}: {runs[-1].rows_per_s:.2f} rows/s", file=sys.stderr)
        return runs

    def sweep(self) -> list[ScoringRun]:
        """Every precision this CPU runs natively (`worth_running`) at each of its batch sizes."""
        return [
            run
            for precision, (_, sizes) in LMEVAL_SETTINGS.items()
            if worth_running(precision)
            for run in self.runs(precision, sizes)
        ]


def fastest_at_parity(runs: list[ScoringRun], reference_accuracy: float) -> ScoringRun:
    """The fastest run whose accuracy is within ACCURACY_TOLERANCE_PTS of the reference."""
    at_parity = [r for r in runs if abs(r.accuracy - reference_accuracy) * 100 <= ACCURACY_TOLERANCE_PTS + 1e-9]
    if not at_parity:
        raise RuntimeError("no run kept the reference accuracy")
    return max(at_parity, key=lambda r: r.rows_per_s)


def compare(lms: LetheLMs, rows: list[ChoiceRow], lmeval: LmEval, task: str, rounds: int = 2) -> dict:
    """Sweep both sides' settings, then time each side's fastest setting at parity `rounds` more times.

    The final rounds alternate the two sides, so a busy spell on the shared machine hits both; each side's
    figure is its best (shortest) run of that setting, as timeit does.
    """
    sweep = lmeval.sweep() + lethe_sweep(lms, rows)
    reference = next(r for r in sweep if r.system == "lm-eval" and r.precision == "fp32")
    best_lmeval = fastest_at_parity([r for r in sweep if r.system == "lm-eval"], reference.accuracy)
    best_lethe = fastest_at_parity([r for r in sweep if r.system == "lethe"], reference.accuracy)
    finals: list[ScoringRun] = []
    for _ in range(rounds):
        finals += lmeval.runs(best_lmeval.precision, [best_lmeval.batch_size])
        finals.append(lethe_run(lms, rows, best_lethe.precision, best_lethe.batch_size))
    return summarize(sweep, finals, reference, task) | {"lethe_block_dtypes": lethe_block_dtypes(lms)}


def lethe_block_dtypes(lms: LetheLMs) -> dict[str, str]:
    """The dtype each Lethe setting's LM stores its decoder blocks' matmul weights in, for the record."""
    return {precision: block_dtype(lms[precision]) for precision in LETHE_SETTINGS if worth_running(precision)}


def _same_setting(run: ScoringRun, other: ScoringRun) -> bool:
    return (run.system, run.precision, run.batch_size) == (other.system, other.precision, other.batch_size)


def summarize(sweep: list[ScoringRun], finals: list[ScoringRun], reference: ScoringRun, task: str) -> dict:
    """The headline figures: each side's best run of its fastest setting at parity, their ratio, every run."""
    sides = {}
    for system in ("lm-eval", "lethe"):
        chosen = fastest_at_parity([r for r in sweep if r.system == system], reference.accuracy)
        repeats = [r for r in sweep + finals if _same_setting(r, chosen)]
        if any(abs(r.accuracy - reference.accuracy) * 100 > ACCURACY_TOLERANCE_PTS + 1e-9 for r in repeats):
            raise RuntimeError(f"{system}'s {chosen.precision} runs disagree on accuracy")
        sides[system] = min(repeats, key=lambda r: r.seconds)
    best_lmeval, best_lethe = sides["lm-eval"], sides["lethe"]
    # How far Lethe's log-likelihoods are from lm-eval fp32's, choice by choice.
    differences = np.abs(np.concatenate(best_lethe.loglikelihoods) - np.concatenate(reference.loglikelihoods))
    agreement = np.mean(
        [np.argmax(a) == np.argmax(b) for a, b in zip(best_lethe.loglikelihoods, reference.loglikelihoods, strict=True)]
    )
    return {
        "task": task,
        "rows": reference.rows,
        "choices": int(sum(len(r) for r in reference.loglikelihoods)),
        "lethe_rows_per_s": best_lethe.rows_per_s,
        "lmeval_rows_per_s": best_lmeval.rows_per_s,
        "speedup": best_lethe.rows_per_s / best_lmeval.rows_per_s,
        "lethe_accuracy": best_lethe.accuracy,
        "lmeval_accuracy": best_lmeval.accuracy,
        "lmeval_fp32_accuracy": reference.accuracy,
        "accuracy_delta_pts": (best_lethe.accuracy - reference.accuracy) * 100,
        "lethe_setting": {"precision": best_lethe.precision, "batch_size": best_lethe.batch_size},
        "lmeval_setting": {"precision": best_lmeval.precision, "batch_size": best_lmeval.batch_size},
        "lethe_vs_lmeval_fp32": {
            "max_abs_loglikelihood_diff": float(differences.max()),
            "mean_abs_loglikelihood_diff": float(differences.mean()),
            "prediction_agreement": float(agreement),
        },
        "runs": [r.summary() | {"stage": "sweep"} for r in sweep] + [r.summary() | {"stage": "final"} for r in finals],
    }
