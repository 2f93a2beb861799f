"""`make bench`: every benchmark in one run on this machine; writes bench/results.json and BENCHMARKS.md.

python -m bench.run [--scoring-rows N] [--skip-lmeval] ...   (from the repository root, in the project venv)
python -m bench.run --only audit   one step alone (audit or memory), its results merged into the existing results.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import jobs, report
from bench.machine import load_average, machine
from bench.naive_peft import naive_gradient_ascent
from bench.peak import matmul_peak_flops
from bench.scoring_bench import LmEval, compare, lethe_sweep
from bench.tasks import TASKS
from bench.training_bench import lethe_gradient_ascent, model_flops_per_token
from lethe.methods import GradientAscentParams
from worker.engine.lm.load import BaseLMCache

BENCH = Path(__file__).resolve().parent
# Square 2048 matmuls timed per dtype; the best one is the peak.
PEAK_REPEATS = 30
REPO = BENCH.parent


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {load_average():.2f}] {message}", file=sys.stderr, flush=True)


def _audit_step(cache_dir: Path) -> dict:
    """The demo forget job and a full audit of it, in a fresh process (so its peak RSS is its own)."""
    _log("audit cost: the demo forget job, then every attack on it, in a fresh process")
    # stderr passes through: the step takes many minutes and logs each stage.
    measured = subprocess.run(
        [sys.executable, "-m", "bench.audit_bench", str(cache_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(measured.stdout.strip().splitlines()[-1])


def _memory_step(cache_dir: Path) -> dict:
    """The peak RSS of one whole forget job and its breakdown, in a fresh process (so the figures are its own)."""
    _log("peak memory of a whole job, in a fresh process")
    job = subprocess.run(
        [sys.executable, "-m", "bench.jobs", str(cache_dir)], cwd=REPO, capture_output=True, text=True, check=True
    )
    measured = json.loads(job.stdout.strip().splitlines()[-1])
    return {
        "peak_rss_mb": measured["peak_rss_mb"],
        "memory_job_s": measured["job_seconds"],
        "memory_breakdown": measured["breakdown"],
        "memory_stage_peaks_mb": measured["stage_peaks_mb"],
    }


def _write(results: dict, out: Path, markdown: Path) -> None:
    out.write_text(json.dumps(results, indent=2) + "\n")
    markdown.write_text(report.render(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "lethe-tests")
    parser.add_argument("--work-dir", type=Path, default=BENCH / "tmp")
    parser.add_argument("--task", default="arc_easy", choices=sorted(TASKS))
    parser.add_argument("--scoring-rows", type=int, default=300)
    parser.add_argument("--skip-lmeval", action="store_true", help="Lethe's side only (no lm-eval venv needed)")
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--only",
        choices=["audit", "memory"],
        help="run this step alone and merge its results into the existing --out file (then re-render --markdown)",
    )
    args = parser.parse_args()
    if args.only is not None:
        if not args.out.is_file():
            parser.error(f"--only merges into an existing results file; {args.out} does not exist (run make bench)")
        earlier: dict = json.loads(args.out.read_text())
        if args.only == "audit":
            earlier["audit"] = _audit_step(args.cache_dir)
        else:
            earlier.update(_memory_step(args.cache_dir))
        _write(earlier, args.out, args.markdown)
        _log(f"wrote the {args.only} step into {args.out} and {args.markdown}")
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"machine": machine()}

    _log("matmul peak")
    results["matmul_peak_gflops"] = {
        "fp32": matmul_peak_flops(torch.float32, repeats=PEAK_REPEATS) / 1e9,
        "bf16": matmul_peak_flops(torch.bfloat16, repeats=PEAK_REPEATS) / 1e9,
        "repeats": PEAK_REPEATS,
    }

    _log("loading SmolLM2-135M-Instruct")
    base = BaseLMCache(args.cache_dir).get(*jobs.BASE_LM)
    model_dir = args.cache_dir / "bundled" / jobs.BASE_LM[1].partition(":")[2]
    rows = TASKS[args.task].rows(args.scoring_rows)

    if args.skip_lmeval:
        _log(f"scoring {len(rows)} {args.task} rows with Lethe")
        results["scoring"] = {"task": args.task, "runs": [r.summary() for r in lethe_sweep(base, rows)]}
    else:
        _log("lm-eval venv")
        subprocess.run(["bash", str(BENCH / "setup_lmeval.sh")], check=True)
        _log(f"scoring {len(rows)} {args.task} rows: lm-eval and Lethe, every setting, then the best of each")
        lmeval = LmEval(BENCH / ".lmeval-venv/bin/python", model_dir, rows, args.work_dir)
        results["scoring"] = compare(base, rows, lmeval, args.task)

    train_rows = TASKS[args.task].rows(args.train_rows)
    learning_rate = GradientAscentParams.model_validate({}).learning_rate
    settings = {"epochs": args.train_epochs, "batch_size": args.train_batch_size, "learning_rate": learning_rate}
    _log(f"training: naive PEFT loop, {len(train_rows)} rows")
    naive = naive_gradient_ascent(model_dir, train_rows, seed=0, **settings)
    _log("training: Lethe")
    lethe_training = lethe_gradient_ascent(base, train_rows, seed=0, **settings)
    target_tokens = sum(
        len(base.tokenizer(row.prompt + row.choices[row.answer])["input_ids"])
        - len(base.tokenizer(row.prompt)["input_ids"])
        for row in train_rows
    )
    flops_per_token = model_flops_per_token(base, target_tokens * args.train_epochs / lethe_training.tokens)
    losses = np.array(lethe_training.losses), np.array(naive.losses)
    results["training"] = {
        "rows": len(train_rows),
        **settings,
        "steps": lethe_training.steps,
        "tokens": lethe_training.tokens,
        "lethe_tokens_per_s": lethe_training.tokens_per_s,
        "naive_tokens_per_s": naive.tokens_per_s,
        "speedup": lethe_training.tokens_per_s / naive.tokens_per_s,
        "model_flops_per_token": flops_per_token,
        "lethe_tflops": lethe_training.tokens_per_s * flops_per_token / 1e12,
        "mfu_vs_bf16_peak": lethe_training.tokens_per_s
        * flops_per_token
        / (results["matmul_peak_gflops"]["bf16"] * 1e9),
        "naive_mfu_vs_fp32_peak": naive.tokens_per_s * flops_per_token / (results["matmul_peak_gflops"]["fp32"] * 1e9),
        # The same batches from the same start: how far apart the two loss curves end up, step by step.
        "loss_curve_max_rel_diff": float(np.max(np.abs(losses[0] - losses[1]) / np.abs(losses[1]))),
        "lethe_losses": lethe_training.losses,
        "naive_losses": naive.losses,
        "naive_tokens": naive.tokens,
    }

    _log("cached start: two jobs in one process")
    cache = BaseLMCache(args.cache_dir)
    cold = jobs.seconds_to_first_step(cache)
    warm = jobs.seconds_to_first_step(cache)
    results["cached_start_s"] = warm
    results["cold_start_s"] = cold

    results.update(_memory_step(args.cache_dir))

    results["audit"] = _audit_step(args.cache_dir)

    results["bench_wall_s"] = time.perf_counter() - started
    _write(results, args.out, args.markdown)
    _log(f"wrote {args.out} and {args.markdown} in {results['bench_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
