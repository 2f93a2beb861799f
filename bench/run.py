"""`make bench`: every benchmark in one run on this machine; writes bench/results.json and BENCHMARKS.md.

python -m bench.run [--scoring-rows N] [--skip-lmeval] ...   (from the repository root, in the project venv)
python -m bench.run --only training|cached-start|memory|audit   one step alone, merged into results.json

results.json keeps one entry per CPU kind (`machine.cpu_kind`: vendor, product line, family number and native
precision, e.g. `amd-epyc-family26-bf16`, `intel-xeon-family6-fp32`), so a run on another machine adds its figures
instead of overwriting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from bench import jobs, report
from bench.machine import cpu_kind, load_average, machine
from bench.naive_peft import naive_gradient_ascent
from bench.peak import matmul_peak_flops
from bench.report import measured_dates
from bench.scoring_bench import LetheLMs, LmEval, compare, lethe_block_dtypes, lethe_lms, lethe_sweep
from bench.tasks import TASKS
from bench.training_bench import lethe_gradient_ascent, model_flops_per_token
from lethe.methods import GradientAscentParams
from worker.allocator import find_jemalloc, preload_environment
from worker.engine.lm.load import BaseLMCache, LoadedLM, load_base_lm
from worker.engine.precision import PRECISION_VARIABLE, bf16_supported, mixed_precision_enabled
from worker.engine.training.checkpointing import ACTIVATION_BUDGET_VARIABLE, CPU_BUDGET_MB
from worker.native_caches import bound_native_caches

BENCH = Path(__file__).resolve().parent
# Square 2048 matmuls timed per dtype; the best one is the peak.
PEAK_REPEATS = 30
REPO = BENCH.parent
# The steps `--only` runs alone, merged into this CPU's entry of results.json.
ONLY_STEPS = ["training", "cached-start", "memory", "audit"]


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {load_average():.2f}] {message}", file=sys.stderr, flush=True)


def _as_a_worker(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with the memory allocator a worker runs with (worker/allocator.py: jemalloc where the host has it)
    and its bounded matmul-library caches (worker/native_caches.py), for the steps that measure a job in a fresh
    process as a worker runs it."""
    environment = preload_environment(environ, find_jemalloc()) or dict(environ)
    bound_native_caches(environment)
    return environment


def _audit_step(cache_dir: Path) -> dict:
    """The demo forget job and a full audit of it, in a fresh process (so its peak RSS is its own)."""
    _log("audit cost: the demo forget job, then every attack on it, in a fresh process")
    # stderr passes through: the step takes many minutes and logs each stage.
    measured = subprocess.run(
        [sys.executable, "-m", "bench.audit_bench", str(cache_dir)],
        cwd=REPO,
        env=_as_a_worker(dict(os.environ)),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(measured.stdout.strip().splitlines()[-1])


def _load(out: Path) -> dict:
    """results.json as {"by_cpu": {kind: one machine's results}}; a file of the older one-machine shape becomes
    that machine's entry."""
    if not out.is_file():
        return {"by_cpu": {}}
    stored: dict = json.loads(out.read_text())
    if "by_cpu" in stored:
        return stored
    return {"by_cpu": {cpu_kind(stored["machine"]): stored}}


def _write(everything: dict, out: Path, markdown: Path) -> None:
    out.write_text(json.dumps(everything, indent=2) + "\n")
    markdown.write_text(report.render_all(everything))


def _peak() -> dict:
    """The matmul peak of each precision this CPU computes natively (bf16 only where it is native: emulated, it
    is no peak of anything Lethe runs)."""
    _log("matmul peak")
    peak: dict = {"fp32": matmul_peak_flops(torch.float32, repeats=PEAK_REPEATS) / 1e9, "repeats": PEAK_REPEATS}
    peak["bf16"] = matmul_peak_flops(torch.bfloat16, repeats=PEAK_REPEATS) / 1e9 if bf16_supported("cpu") else None
    return peak


def _scoring_lms(base: LoadedLM, cache_dir: Path) -> LetheLMs:
    """The LM each of Lethe's scoring settings scores (`scoring_bench.lethe_lms`): where the worker's LM stores its
    blocks in bf16, the fp32 setting gets a second copy, loaded as LETHE_PRECISION=fp32 loads it."""

    def load_fp32() -> LoadedLM:
        _log("loading an fp32 copy of SmolLM2-135M-Instruct for Lethe's fp32 scoring setting")
        with mock.patch.dict(os.environ, {PRECISION_VARIABLE: "fp32"}):  # put back as it was on leaving
            return load_base_lm(*jobs.BASE_LM, cache_dir)

    return lethe_lms(base, load_fp32)


def _training_step(base: LoadedLM, model_dir: Path, args: argparse.Namespace, peak: dict) -> dict:
    """Lethe's loop against the naive PEFT loop on the same rows, interleaved `--train-repeats` times (naive,
    Lethe, naive, Lethe...: a busy spell on the shared machine hits both), each side's best run kept."""
    train_rows = TASKS[args.task].rows(args.train_rows)
    learning_rate = GradientAscentParams.model_validate({}).learning_rate
    settings = {"epochs": args.train_epochs, "batch_size": args.train_batch_size, "learning_rate": learning_rate}
    naive_runs, lethe_runs, timings = [], [], []
    for repeat in range(args.train_repeats):
        for system in ("naive", "lethe"):
            _log(f"training: {system}, {len(train_rows)} rows (round {repeat + 1} of {args.train_repeats})")
            load = load_average()
            if system == "naive":
                run = naive_gradient_ascent(model_dir, train_rows, seed=0, **settings)
                naive_runs.append(run)
            else:
                run = lethe_gradient_ascent(base, train_rows, seed=0, **settings)
                lethe_runs.append(run)
            timings.append({"system": system, "tokens_per_s": run.tokens_per_s, "load_average": load})
            _log(f"  {system}: {run.tokens_per_s:.0f} tokens/s")
    naive = max(naive_runs, key=lambda r: r.tokens_per_s)
    lethe_training = max(lethe_runs, key=lambda r: r.tokens_per_s)
    target_tokens = sum(
        len(base.tokenizer(row.prompt + row.choices[row.answer])["input_ids"])
        - len(base.tokenizer(row.prompt)["input_ids"])
        for row in train_rows
    )
    flops_per_token = model_flops_per_token(base, target_tokens * args.train_epochs / lethe_training.tokens)
    # MFU against the peak of the precision the run computed in: Lethe's as LETHE_PRECISION resolves here, the
    # naive loop's fp32.
    precision = "bf16" if mixed_precision_enabled("cpu") else "fp32"
    lethe_peak = peak[precision] if peak.get(precision) else peak["fp32"]
    losses = np.array(lethe_training.losses), np.array(naive.losses)
    return {
        "rows": len(train_rows),
        **settings,
        "steps": lethe_training.steps,
        "tokens": lethe_training.tokens,
        "precision": precision,
        "repeats": args.train_repeats,
        "runs": timings,
        "lethe_tokens_per_s": lethe_training.tokens_per_s,
        "naive_tokens_per_s": naive.tokens_per_s,
        "speedup": lethe_training.tokens_per_s / naive.tokens_per_s,
        "model_flops_per_token": flops_per_token,
        "lethe_tflops": lethe_training.tokens_per_s * flops_per_token / 1e12,
        "mfu": lethe_training.tokens_per_s * flops_per_token / (lethe_peak * 1e9),
        "naive_mfu_vs_fp32_peak": naive.tokens_per_s * flops_per_token / (peak["fp32"] * 1e9),
        # The same batches from the same start: how far apart the two loss curves end up, step by step.
        "loss_curve_max_rel_diff": float(np.max(np.abs(losses[0] - losses[1]) / np.abs(losses[1]))),
        "lethe_losses": lethe_training.losses,
        "naive_losses": naive.losses,
        "naive_tokens": naive.tokens,
    }


def _cached_start_step(cache_dir: Path) -> dict:
    """Two jobs on the same base and rows in one process (one worker): each from its claim (getting the base LM
    from the cache) to the start of forgetting and to its first optimizer step. The second reuses the base stage
    the first evaluated."""
    _log("cached start: two jobs in one process")
    cache = BaseLMCache(cache_dir)
    cold_load = load_average()
    cold = jobs.seconds_to_first_step(cache)
    warm_load = load_average()
    warm = jobs.seconds_to_first_step(cache)
    return {
        "cached_training_start_s": warm.training_started,
        "cold_training_start_s": cold.training_started,
        "cached_start_s": warm.first_step,
        "cold_start_s": cold.first_step,
        "cached_start_load_average": warm_load,
        "cold_start_load_average": cold_load,
    }


def _memory_step(cache_dir: Path) -> dict:
    """The peak RSS of one whole forget job and its breakdown, in a fresh process (so the figures are its own): as
    a worker runs it by default (a CPU worker's activation budget, CPU_BUDGET_MB), then with
    LETHE_ACTIVATION_BUDGET_MB=0 (no activation checkpointing), what the budget saves; before both, the peak of
    converting the bundled GGUF (a worker's first job on a fresh cache does it once)."""

    def job(extra_env: dict[str, str], *args: str) -> dict:
        env = _as_a_worker({k: v for k, v in os.environ.items() if k != ACTIVATION_BUDGET_VARIABLE} | extra_env)
        done = subprocess.run(
            [sys.executable, "-m", "bench.jobs", str(cache_dir), *args],
            cwd=REPO, capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
        return json.loads(done.stdout.strip().splitlines()[-1])

    # First, and on its own: a worker's first job on a fresh cache converts the bundled GGUF once; the jobs below
    # then find the copy, as every later job does.
    _log("peak memory of converting the bundled GGUF, in a fresh process")
    conversion = job({}, "conversion")
    _log("peak memory of a whole job, in a fresh process")
    measured = job({})
    _log(f"peak memory of a whole job with {ACTIVATION_BUDGET_VARIABLE}=0, in a fresh process")
    unbudgeted = job({ACTIVATION_BUDGET_VARIABLE: "0"})
    return {
        "peak_rss_mb": measured["peak_rss_mb"],
        "memory_peak_rss_from": measured["peak_rss_from"],
        "memory_job_s": measured["job_seconds"],
        "memory_allocator": measured["allocator"],
        "memory_native_caches": measured["native_caches"],
        "memory_breakdown": measured["breakdown"],
        "memory_stage_peaks_mb": measured["stage_peaks_mb"],
        "memory_conversion": conversion,
        "memory_activation_budget_mb": CPU_BUDGET_MB,
        "memory_without_activation_budget": {
            "activation_budget_mb": 0,
            "peak_rss_mb": unbudgeted["peak_rss_mb"],
            "job_seconds": unbudgeted["job_seconds"],
            "stage_peaks_mb": unbudgeted["stage_peaks_mb"],
        },
    }


def main() -> None:
    # Lethe's side computes in this process too (training, scoring, the cached start): with the caches a worker
    # bounds, set before the first matmul reads them.
    bound_native_caches()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "lethe-tests")
    parser.add_argument("--work-dir", type=Path, default=BENCH / "tmp")
    parser.add_argument("--task", default="arc_easy", choices=sorted(TASKS))
    parser.add_argument("--scoring-rows", type=int, default=300)
    parser.add_argument("--skip-lmeval", action="store_true", help="Lethe's side only (no lm-eval venv needed)")
    parser.add_argument("--train-rows", type=int, default=64)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--train-repeats", type=int, default=2, help="interleaved naive/Lethe rounds, best of each")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--only",
        choices=ONLY_STEPS,
        help="run this step alone and merge its results into this CPU's entry of --out (then re-render --markdown)",
    )
    args = parser.parse_args()
    everything = _load(args.out)
    here = machine()
    kind = cpu_kind(here)
    if args.only is not None:
        entry = everything["by_cpu"].setdefault(kind, {})
        # The entry's other steps keep the dates they were measured on (its `measured`, or the machine's date of
        # the run that measured them), before `machine` takes this run's.
        entry["measured"] = measured_dates(entry)
        entry["machine"] = here
        if args.only == "audit":
            entry["audit"] = _audit_step(args.cache_dir)
        elif args.only == "cached-start":
            entry |= _cached_start_step(args.cache_dir)
        elif args.only == "memory":
            entry |= _memory_step(args.cache_dir)
        else:  # training
            entry["matmul_peak_gflops"] = _peak()
            _log("loading SmolLM2-135M-Instruct")
            base = BaseLMCache(args.cache_dir).get(*jobs.BASE_LM)
            model_dir = args.cache_dir / "bundled" / jobs.BASE_LM[1].partition(":")[2]
            entry["training"] = _training_step(base, model_dir, args, entry["matmul_peak_gflops"])
        entry["measured"][args.only] = machine()["date"]
        _write(everything, args.out, args.markdown)
        _log(f"wrote the {args.only} step into {args.out} ({kind}) and {args.markdown}")
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"machine": here, "matmul_peak_gflops": _peak()}

    _log("loading SmolLM2-135M-Instruct")
    base = BaseLMCache(args.cache_dir).get(*jobs.BASE_LM)
    model_dir = args.cache_dir / "bundled" / jobs.BASE_LM[1].partition(":")[2]
    rows = TASKS[args.task].rows(args.scoring_rows)

    if args.skip_lmeval:
        _log(f"scoring {len(rows)} {args.task} rows with Lethe")
        lms = _scoring_lms(base, args.cache_dir)
        runs = [r.summary() for r in lethe_sweep(lms, rows)]
        results["scoring"] = {"task": args.task, "runs": runs, "lethe_block_dtypes": lethe_block_dtypes(lms)}
    else:
        _log("lm-eval venv")
        subprocess.run(["bash", str(BENCH / "setup_lmeval.sh")], check=True)
        _log(f"scoring {len(rows)} {args.task} rows: lm-eval and Lethe, every setting, then the best of each")
        lmeval = LmEval(BENCH / ".lmeval-venv/bin/python", model_dir, rows, args.work_dir)
        results["scoring"] = compare(_scoring_lms(base, args.cache_dir), rows, lmeval, args.task)

    measured = {"scoring": machine()["date"]}
    results["training"] = _training_step(base, model_dir, args, results["matmul_peak_gflops"])
    measured["training"] = machine()["date"]
    results |= _cached_start_step(args.cache_dir)
    measured["cached-start"] = machine()["date"]
    results |= _memory_step(args.cache_dir)
    measured["memory"] = machine()["date"]
    results["audit"] = _audit_step(args.cache_dir)
    measured["audit"] = machine()["date"]
    results["measured"] = measured

    results["bench_wall_s"] = time.perf_counter() - started
    everything["by_cpu"][kind] = results
    _write(everything, args.out, args.markdown)
    _log(f"wrote {args.out} ({kind}) and {args.markdown} in {results['bench_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
