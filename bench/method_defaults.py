"""Does every method's default reach its target on the bundled SmolLM2 without a fine-tune? Writes
bench/method_defaults.json.

The task is issue 10's: 50 rows "Question: What is {a} plus {b}?\\nAnswer:" with two choices, the true sum and a
near miss (sum ± 1), half held out (heldout_fraction 0.5, as the demo); retain = the first RETAIN_ROWS rows of
examples/data/arc_easy_demo.jsonl. One seed. Each method runs through `run_forget` (what a job runs) with its
default params (batch size included); the variants test the change that would fix a default that misses. RUNS is
in priority order: on a busy shared CPU a run takes minutes, and the JSON is rewritten after every run, so a sweep
cut short keeps what it measured.

python -m bench.method_defaults   (from the repository root, in the project venv)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.machine import load_average, machine
from lethe.methods import METHODS, RMUParams
from lethe.rows import ChoiceRow, Row, split_heldout
from worker.engine.forget.run import ForgetPlan, run_forget
from worker.engine.lm.load import BaseLMCache, LoadedLM

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "method_defaults.json"
SEED = 0
ROWS = 50
HELDOUT_FRACTION = 0.5
# Fewer retain rows than the demo's 32: a run on a shared 2-core CPU takes minutes.
RETAIN_ROWS = 8
# (method, params) in priority order: the methods this sweep's change touches first, then the other defaults,
# then variants that test a candidate fix for a default that misses.
FIRST = ["random_label", "rmu"]
RUNS: list[tuple[str, dict[str, Any]]] = [
    ("random_label", {}),
    ("rmu", {}),
    ("random_label", {"epochs": 20, "stopping": "heldout_below_chance"}),
    *[(name, {}) for name in METHODS.names() if name not in FIRST],
    ("rmu", {"trained_modules": "down_proj"}),
    ("rmu", {"steering_coefficient": 6.5}),
]


def addition_rows(n: int, seed: int) -> list[Row]:
    """`n` choice rows "What is a plus b?" with the true sum and a near miss (sum ± 1), in seeded random order."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        miss = a + b + rng.choice((-1, 1))
        choices = [f" {a + b}", f" {miss}"]
        rng.shuffle(choices)
        rows.append(ChoiceRow(f"Question: What is {a} plus {b}?\nAnswer:", tuple(choices), choices.index(f" {a + b}")))
    return rows


def retain_rows() -> list[Row]:
    lines = (REPO / "examples" / "data" / "arc_easy_demo.jsonl").read_text().splitlines()[:RETAIN_ROWS]
    return [ChoiceRow.from_dict(json.loads(line)) for line in lines]


def block_norm(base: LoadedLM, rows: list[Row], layer: int) -> float:
    """Mean over rows of the mean token norm of block `layer`'s output (transformers' hidden_states[layer + 1])."""
    norms = []
    with torch.no_grad():
        for row in rows:
            ids = base.tokenizer(row.context + row.target, return_tensors="pt").input_ids
            hidden = base.lm(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
            norms.append(float(hidden[0].norm(dim=-1).mean()))
    return sum(norms) / len(norms)


def one_run(base: LoadedLM, method: str, params: dict[str, Any], forget_train, forget_heldout, retain) -> dict:
    """Run one method with `params` and read the outcome off its metrics."""
    plan = ForgetPlan(method=method, method_params=params, finetune=None, probe=False, seed=SEED)
    started = time.perf_counter()
    reported = [0.0]

    def progress(stage: str, done: float) -> None:
        if done - reported[0] >= 0.1:  # a line every tenth of the run: how fast the busy machine is going
            reported[0] = done
            print(f"  [{time.strftime('%H:%M:%S')}] {stage} {done:.0%}", file=sys.stderr, flush=True)

    outcome = run_forget(base, plan, forget_train, forget_heldout, {"arc_easy": retain}, progress)
    seconds = time.perf_counter() - started
    final = {(m.stage, m.split, m.name): m.value for m in outcome.metrics if m.layer is None}
    forgetting = outcome.forgetting
    after = final[("forgotten", "forget_train", "accuracy")]
    return {
        "method": method,
        "params": params,
        "target": forgetting.target,
        "reached": forgetting.target_reached,
        "stop_reason": forgetting.stop_reason,
        "steps": forgetting.steps,
        "forget_train_before": final[("base", "forget_train", "accuracy")],
        "forget_train_after": after,
        "forget_heldout_before": final[("base", "forget_heldout", "accuracy")],
        "forget_heldout_after": final[("forgotten", "forget_heldout", "accuracy")],
        "retain_before": final[("base", "retain:arc_easy", "accuracy")],
        "retain_after": final[("forgotten", "retain:arc_easy", "accuracy")],
        "seconds": round(seconds, 1),
        "load_average": round(load_average(), 2),
    }


def main() -> None:
    # One thread: on a shared, oversubscribed CPU two OpenMP threads mostly wait for each other.
    torch.set_num_threads(1)
    cache_dir = BENCH / ".work" / "lm-cache"
    base = BaseLMCache(cache_dir).get("smollm2-135m-instruct", "bundled:smollm2-135m-instruct")
    forget_train, forget_heldout = split_heldout(addition_rows(ROWS, SEED), HELDOUT_FRACTION, SEED)
    retain = retain_rows()
    layer = RMUParams.model_validate({}).steered_layer(base.lm.config.num_hidden_layers)
    results: dict[str, Any] = {
        "machine": machine(),
        "task": {
            "rows": ROWS,
            "forget_train": len(forget_train),
            "forget_heldout": len(forget_heldout),
            "retain_rows": len(retain),
            "seed": SEED,
        },
        "rmu": {"layer": layer, "mean_forget_norm": block_norm(base, forget_train, layer)},
        "runs": [],
    }
    for method, params in RUNS:
        print(f"[{time.strftime('%H:%M:%S')}] {method} {params}", file=sys.stderr, flush=True)
        results["runs"].append(one_run(base, method, params, forget_train, forget_heldout, retain))
        OUT.write_text(json.dumps(results, indent=2) + "\n")  # after every run: a cut-short sweep keeps its results
        print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
