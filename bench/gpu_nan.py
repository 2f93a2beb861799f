"""Do left-padded bf16 batches give NaN on CUDA? A diagnostic of the second GPU run (issue 11).

    python -m bench.gpu_nan [--out bench/results-gpu-nan.json] [--allow-cpu]

The second run of bench/gpu_bench.py fed Lethe's loop padded batches (packing no longer paid for 16 rows of 550
tokens) and its gradient ascent ended with a NaN loss, where the packed run of the first had ended at -17.3. Lethe pads
on the left (every target in the last columns), so a padding position's query attends to nothing: a fully masked
row, which some attention kernels answer with NaN. This measures, on a random-init SmolLM2-135M in bf16 under
autocast (as a worker on a GPU runs), for each choice of SDPA kernels: whether the logits at target positions and
the LoRA gradients of one left-padded batch are finite, and the losses of a few steps of Lethe's gradient ascent on
long rows (padded, as packing does not pay there).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.random_lm import build_random_lm, choice_rows
from bench.training_bench import LORA_ALPHA, LORA_RANK, lethe_gradient_ascent
from worker.engine.lm.load import load_base_lm
from worker.engine.lm.lora import attached_lora, lora_config
from worker.engine.precision import autocast
from worker.engine.training.batches import IGNORE, collate, examples_of
from worker.engine.training.logprobs import aligned_labels, mean_nll

BENCH = Path(__file__).resolve().parent
SETTINGS = {
    "default": None,
    "no-cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "efficient-only": [SDPBackend.EFFICIENT_ATTENTION],
    "math-only": [SDPBackend.MATH],
}


def _log(message: str) -> None:
    print(f"gpu_nan: {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH / "results-gpu-nan.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        _log("no CUDA device: nothing measured (--allow-cpu for a dry run)")
        return 2
    dry_run = not torch.cuda.is_available()
    results: dict = {"dry_run": dry_run, "torch": torch.__version__, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="lethe-gpu-nan-") as scratch:
        model_dir = build_random_lm("smollm2-135m", Path(scratch) / "lm", tiny=dry_run)
        base = load_base_lm("smollm2-135m", f"path:{model_dir}", Path(scratch) / "cache")
        results["weights_dtype"] = str(next(base.lm.parameters()).dtype)
        # Rows of very different lengths: the short ones get long left padding.
        rows = choice_rows(4, 12, seed=3) + choice_rows(4, 200, seed=4)
        examples = examples_of(base.tokenizer, rows, 2048)
        batch = collate(examples, base.tokenizer.pad_token_id, base.device)
        long_rows = choice_rows(128, 480 if not dry_run else 24, seed=5)
        for name, backends in SETTINGS.items():
            entry: dict = {}
            try:
                with sdpa_kernel(backends) if backends is not None else nullcontext():
                    torch.manual_seed(0)
                    with attached_lora(base.lm, lora_config(base.lm, LORA_RANK, LORA_ALPHA)) as peft_lm:
                        peft_lm.train()
                        with autocast(base.device):
                            logits = peft_lm(**batch.lm_inputs()).logits
                            loss = mean_nll(logits, batch.labels)
                        loss.backward()
                        targets = aligned_labels(logits, batch.labels) != IGNORE
                        grads = [p.grad for p in peft_lm.parameters() if p.requires_grad and p.grad is not None]
                        entry["loss"] = float(loss.detach())
                        entry["logits_finite_at_targets"] = bool(torch.isfinite(logits[targets]).all())
                        entry["logits_finite_everywhere"] = bool(torch.isfinite(logits).all())
                        entry["gradients_finite"] = all(bool(torch.isfinite(g).all()) for g in grads)
                        peft_lm.eval()
                    run = lethe_gradient_ascent(base, long_rows, seed=0, epochs=1, batch_size=16, learning_rate=5e-4)
                    entry["ascent_losses"] = run.losses
                    entry["ascent_nan"] = any(math.isnan(x) for x in run.losses)
            except Exception as exc:  # a backend that refuses this input: say which and why
                entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
            results["settings"][name] = entry
            _log(f"{name}: {json.dumps(entry)}")
        del base
        # The second GPU bench run itself: Llama-3.2-1B, 256 rows of 480 pseudo-words, 2 epochs of batch 16.
        model_dir = build_random_lm("llama-3.2-1b", Path(scratch) / "lm-1b", tiny=dry_run)
        base = load_base_lm("llama-3.2-1b", f"path:{model_dir}", Path(scratch) / "cache")
        bench_rows = choice_rows(256 if not dry_run else 8, 480 if not dry_run else 24)
        for name in ("default", "no-cudnn"):
            backends = SETTINGS[name]
            with sdpa_kernel(backends) if backends is not None else nullcontext():
                run = lethe_gradient_ascent(base, bench_rows, seed=0, epochs=2, batch_size=16, learning_rate=5e-4)
            results["settings"][name]["bench_1b_losses"] = run.losses
            _log(f"{name}: 1B bench losses {run.losses}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
