"""The bench's GPU step: forget training on the 1B shape, Lethe's loop against the naive PEFT loop, on CUDA.

    python -m bench.gpu_bench [--out bench/results-gpu.json]

Writes `bench/results-gpu.json`: the GPU's measured bf16 matmul peak (bench/peak.py, synchronised), Lethe's
forget training (gradient ascent, LoRA r=8 on every linear layer: bench/training_bench.py) in tokens/s and MFU
against that peak, the naive PEFT loop (bench/naive_peft.py) on the same rows in the same order, in fp32 (the
baseline as bench/naive_peft.py defines it) and in bf16 weights (how a GPU user would more likely load the LM),
the memory at each run's peak, and the issue's targets (MFU ≥ 35%, ≥ 2× the naive loop) as met or not.

The LM is a random-init Llama-3.2-1B (bench/configs/llama-3.2-1b.json, bench/random_lm.py): its speed is that of
the real one. The rows are long multiple-choice prompts of pseudo-words (`--prompt-words` each), so that a batch
fills the GPU as real documents would; the loss is on the answer only, as in every forget job.

`--allow-cpu` (scripts/gpu_check.sh's dry run) runs the same code on the CPU with a tiny shape and a few short
rows; its figures mean nothing and say so (`"dry_run": true`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.machine import machine
from bench.naive_peft import TrainingRun, naive_gradient_ascent
from bench.peak import matmul_peak_flops
from bench.random_lm import build_random_lm, choice_rows
from bench.training_bench import LORA_RANK, lethe_gradient_ascent, model_flops_per_token
from lethe.methods import GradientAscentParams
from worker.engine.lm.load import LoadedLM, load_base_lm

BENCH = Path(__file__).resolve().parent
TARGET_MFU = 0.35
TARGET_SPEEDUP = 2.0


def _log(message: str) -> None:
    print(f"gpu_bench: {message}", file=sys.stderr, flush=True)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _timed(device: torch.device, run):  # type: ignore[no-untyped-def]
    """`run()` between two synchronisations: (its TrainingRun, wall seconds, peak bytes allocated meanwhile)."""
    _reset_peak(device)
    _synchronise(device)
    started = time.perf_counter()
    result: TrainingRun = run()
    _synchronise(device)
    return result, time.perf_counter() - started, _peak_bytes(device)


def _bytes(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(
        p.numel() * p.element_size() for p in module.parameters() if trainable is None or p.requires_grad == trainable
    )


def _profile(base: LoadedLM, rows: list, settings: dict, device: torch.device) -> dict:
    """Where the time of Lethe's loop goes, on `rows` (one epoch): the wall time, the device's busy time (the kernels'
    own times summed) and the operators that took most of it. A device busy for a small share of the wall time
    means the loop waits on the host (launches, synchronisations), not on the GPU's arithmetic."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _synchronise(device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        lethe_gradient_ascent(base, rows, seed=0, **(settings | {"epochs": 1}))
        _synchronise(device)
    wall_us = (time.perf_counter() - started) * 1e6
    averages = prof.key_averages()
    # The kernels' own times (as the table's "Self CUDA time total"): an operator's self device time counts its
    # kernels again, so only the device's events are summed.
    kernels = [e for e in averages if e.device_type != DeviceType.CPU]
    busy_us = sum(e.self_device_time_total for e in kernels) if device.type == "cuda" else None
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = averages.table(sort_by=sort_by, row_limit=25, max_name_column_width=60)
    print(table, file=sys.stderr, flush=True)
    top = sorted(averages, key=lambda e: e.self_device_time_total if busy_us is not None else e.self_cpu_time_total)
    return {
        "rows": len(rows),
        "wall_ms": wall_us / 1e3,
        "device_busy_ms": None if busy_us is None else busy_us / 1e3,
        "device_busy_fraction": None if busy_us is None else busy_us / wall_us,
        "top_operators": [
            {
                "name": e.key,
                "calls": e.count,
                "self_device_ms": e.self_device_time_total / 1e3,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
            }
            for e in reversed(top[-15:])
        ],
        "note": "wall time includes the profiler's own overhead",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="llama-3.2-1b", help="a name in bench/configs")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--prompt-words", type=int, default=480)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--allow-cpu", action="store_true", help="dry run on the CPU: tiny shape, few short rows")
    parser.add_argument("--skip-naive-bf16", action="store_true", help="run the naive loop in fp32 only")
    parser.add_argument("--out", type=Path, default=BENCH / "results-gpu.json")
    args = parser.parse_args()

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.allow_cpu:
        device = torch.device("cpu")
        args.rows, args.prompt_words, args.batch_size, args.epochs = 8, 24, 4, 1
        _log("no CUDA: dry run on the CPU, tiny shape (the figures mean nothing)")
    else:
        _log("no CUDA device: nothing measured (--allow-cpu for a dry run)")
        return 2
    dry_run = device.type != "cuda"

    results: dict = {"machine": machine(), "dry_run": dry_run, "device": str(device)}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        results["gpu"] = {
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "capability": f"{properties.major}.{properties.minor}",
            "cuda": torch.version.cuda,
        }
    _log("bf16 matmul peak")
    size, repeats = (8192, 20) if device.type == "cuda" else (512, 3)
    peak = matmul_peak_flops(torch.bfloat16, size=size, repeats=repeats, device=str(device))
    results["matmul_peak_bf16_tflops"] = peak / 1e12
    results["matmul_peak_setting"] = {"size": size, "repeats": repeats, "synchronised": device.type == "cuda"}

    rows = choice_rows(args.rows, args.prompt_words)
    learning_rate = GradientAscentParams.model_validate({}).learning_rate
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": learning_rate}
    with tempfile.TemporaryDirectory(prefix="lethe-gpu-bench-") as scratch:
        model_dir = build_random_lm(args.config, Path(scratch) / args.config, tiny=dry_run)
        _log(f"random-init {args.config}{' (tiny)' if dry_run else ''} in {model_dir}")
        base: LoadedLM = load_base_lm(args.config, f"path:{model_dir}", Path(scratch) / "cache")
        weights = _bytes(base.lm)
        _log(f"loaded on {base.device}: {sum(p.numel() for p in base.lm.parameters()) / 1e6:.0f} M parameters")

        tokenizer = base.tokenizer
        tokens_per_epoch = sum(len(tokenizer(r.prompt + r.choices[r.answer])["input_ids"]) for r in rows)
        targets_per_epoch = tokens_per_epoch - sum(len(tokenizer(r.prompt)["input_ids"]) for r in rows)
        flops_per_token = model_flops_per_token(base, targets_per_epoch / tokens_per_epoch)

        # Warm-up on a few rows: kernel choice, cuBLAS workspaces and allocator pools are not what is measured.
        warm = rows[: args.batch_size]
        _log("warm-up")
        lethe_gradient_ascent(base, warm, seed=0, **(settings | {"epochs": 1}))

        _log(f"Lethe: {len(rows)} rows × {args.epochs} epochs, batch {args.batch_size}")
        lethe, lethe_wall, lethe_peak = _timed(
            device, lambda base=base: lethe_gradient_ascent(base, rows, seed=0, **settings)
        )
        lethe_tps = lethe.tokens / lethe_wall
        mfu = lethe_tps * flops_per_token / peak
        results["lethe"] = {
            "steps": lethe.steps,
            "tokens": lethe.tokens,
            "seconds": lethe_wall,
            "tokens_per_s": lethe_tps,
            "mfu": mfu,
            "peak_allocated_gib": None if lethe_peak is None else lethe_peak / 2**30,
            "first_loss": lethe.losses[0],
            "last_loss": lethe.losses[-1],
        }
        _log("profile: Lethe's loop on two batches (torch.profiler)")
        results["lethe_profile"] = _profile(base, rows[: 2 * args.batch_size], settings, device)
        del base  # the naive runs load their own copy: their peaks must not include this one
        _reset_peak(device)

        naive_runs: dict[str, dict] = {}
        dtypes = {"fp32": torch.float32} | ({} if args.skip_naive_bf16 else {"bf16": torch.bfloat16})
        for label, dtype in dtypes.items():
            _log(f"naive PEFT loop, weights in {label}: warm-up, then the same rows")
            naive_gradient_ascent(
                model_dir, warm, seed=0, device=str(device), dtype=dtype, **(settings | {"epochs": 1})
            )
            naive, naive_wall, naive_peak = _timed(
                device,
                lambda dtype=dtype: naive_gradient_ascent(  # type: ignore[misc]
                    model_dir, rows, seed=0, device=str(device), dtype=dtype, **settings
                ),
            )
            naive_runs[label] = {
                "tokens_per_s": naive.tokens / naive_wall,
                "seconds": naive_wall,
                "mfu": naive.tokens / naive_wall * flops_per_token / peak,
                "peak_allocated_gib": None if naive_peak is None else naive_peak / 2**30,
                "speedup_of_lethe": lethe_tps / (naive.tokens / naive_wall),
            }
        results["naive"] = naive_runs

    results["memory"] = {
        # What a forget job must hold at least: the base weights (in their dtype on the device) and one batch's
        # activations; LoRA weights, gradients and AdamW's two moments are a few MB at r=8. The peak of the Lethe
        # run above minus the weights is everything else it held (activations, logits, copies).
        "weights_gib": weights / 2**30,
        "lethe_peak_allocated_gib": results["lethe"]["peak_allocated_gib"],
        "lethe_peak_minus_weights_gib": (None if lethe_peak is None else (lethe_peak - weights) / 2**30),
        "measured_with": "torch.cuda.max_memory_allocated between torch.cuda.reset_peak_memory_stats and the run's end",
    }
    results["settings"] = {
        "config": args.config,
        "rows": len(rows),
        "prompt_words": args.prompt_words,
        "tokens_per_epoch": tokens_per_epoch,
        "target_fraction": targets_per_epoch / tokens_per_epoch,
        "model_flops_per_token": flops_per_token,
        "lora_rank": LORA_RANK,
        **settings,
    }
    slowest_gap = min(run["speedup_of_lethe"] for run in naive_runs.values())
    results["targets"] = {
        "mfu": {"target": TARGET_MFU, "value": mfu, "met": (not dry_run) and mfu >= TARGET_MFU},
        "speedup_vs_naive_fp32": {
            "target": TARGET_SPEEDUP,
            "value": naive_runs["fp32"]["speedup_of_lethe"],
            "met": (not dry_run) and naive_runs["fp32"]["speedup_of_lethe"] >= TARGET_SPEEDUP,
        },
        "speedup_vs_every_naive": {
            "target": TARGET_SPEEDUP,
            "value": slowest_gap,
            "met": (not dry_run) and slowest_gap >= TARGET_SPEEDUP,
        },
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    _log(
        f"Lethe {lethe_tps:,.0f} tokens/s, MFU {mfu:.1%} of {peak / 1e12:.2f} TFLOP/s; "
        + ", ".join(
            f"naive {k} {v['tokens_per_s']:,.0f} tokens/s ({v['speedup_of_lethe']:.2f}×)" for k, v in naive_runs.items()
        )
    )
    _log("targets: " + ", ".join(f"{k} {'met' if v['met'] else 'NOT met'}" for k, v in results["targets"].items()))
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
