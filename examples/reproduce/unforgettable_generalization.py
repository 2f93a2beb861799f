"""Reproduce the protocol of Unforgettable Generalization (Zhang et al., arXiv 2409.02228) through Lethe's HTTP API.

The paper fine-tunes an LM on a binary task, then fine-tunes it again on the same rows with random labels, and
asks where the forgetting shows: on the rows forgotten, on unseen rows of the same task, on other tasks. Its
finding: how far forgetting generalizes is decided mostly by the task it is *evaluated* on, not the task that was
forgotten; and the forgetting is shallow (linear probes still read the task from the hidden states).

Here, on SmolLM2-135M-Instruct (the bundled base model) and four binary tasks from ../shared/datasets/binary_tasks
(`TASKS`, 200 rows each), one forget request per task:
- the forget set is the task's rows (half forget-train, half forget-heldout), the other three tasks are retain
  datasets, so every job measures every task;
- `finetune` teaches forget-train first (the paper's first stage), then `random_label` forgets it (the second) with
  the paper's stopping rule (`stopping: heldout_below_chance`: stop once forget-heldout accuracy is below chance,
  checked every 26 steps, two epochs of 100 rows in batches of 8, since every check scores all 800 rows), at most
  10 epochs;
- `probe: true` fits per-layer linear probes on forget-train hidden states and scores them on forget-heldout, before
  and after forgetting.

The matrix: forget ratio of each job (row: the task forgotten) on each task's unseen rows (column: forget-heldout on
the diagonal, the retain split elsewhere), with its 95% paired-bootstrap interval as the API reports it. A cell is
empty where the LM was not above chance on that task before forgetting (the ratio is undefined). The share of the
matrix's variance explained by its columns (evaluation task) and by its rows (task forgotten) restates the
paper's claim in numbers.

Deviations from the paper, forced by the setting: a 135M LM instead of Llama-2-7B, a LoRA adapter instead of full
fine-tuning, 100 training rows per task and a few epochs instead of early stopping over 100 epochs (CPU minutes);
multiple-choice tasks are made binary (the answer and one distractor drawn with a fixed seed), as the paper's
binary tasks are. Every number is the API's; this script computes only the variance shares.

Run: `.venv/bin/python examples/reproduce/unforgettable_generalization.py` (starts `lethe serve` in the embedded
default, as `make demo` does; about an hour on a 2-core CPU). It writes docs/results/unforgettable_generalization.md,
its JSON, and the plots beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets" / "binary_tasks"
RESULTS = ROOT / "docs" / "results"
NAME = "unforgettable_generalization"
REQUEST = json.loads((Path(__file__).with_name(f"{NAME}_request.json")).read_text())
ROWS_PER_TASK = 200
# Short rows keep the run in CPU minutes (characters of the longest prompt + choice).
MAX_CHARS = 220

sys.path[:0] = [str(ROOT), str(ROOT / "examples")]
from demo import follow, free_port, wait_healthy  # noqa: E402  (the demo's helpers to start and poll Lethe)

from bench.machine import cpu_model  # noqa: E402


def _qa(record: dict[str, Any], choices: list[str], answer: int) -> dict[str, Any]:
    # lm-evaluation-harness's "Question: ...\nAnswer:" template; the API appends each choice as given.
    return {
        "prompt": f"Question: {record['question'].strip()}\nAnswer:",
        "choices": [" " + c.strip() for c in choices],
        "answer": answer,
    }


def binary(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The answer and one distractor drawn with `rng`, in a random order."""
    label = record["label"]
    distractor = rng.choice([i for i in range(len(record["choices"])) if i != label])
    pair = [label, distractor]
    rng.shuffle(pair)
    return _qa(record, [record["choices"][i] for i in pair], pair.index(label))


def as_is(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return _qa(record, record["choices"], record["label"])


# name → (normalised file, row builder)
TASKS: dict[str, tuple[Path, Callable[[dict[str, Any], random.Random], dict[str, Any]]]] = {
    "piqa": (SHARED / "piqa" / "normalized.jsonl", as_is),
    "arc_easy": (SHARED / "arc" / "normalized_arc_easy.jsonl", binary),
    "sciq": (SHARED / "sciq" / "normalized.jsonl", binary),
    "csqa2": (SHARED / "csqa2" / "normalized_train.jsonl", as_is),
}


def task_rows(name: str, seed: int, count: int = ROWS_PER_TASK) -> list[dict[str, Any]]:
    path, build = TASKS[name]
    rng = random.Random(seed)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [build(r, rng) for r in records]
    rows = [r for r in rows if len(set(r["choices"])) == len(r["choices"])]
    rows = [r for r in rows if len(r["prompt"]) + max(len(c) for c in r["choices"]) <= MAX_CHARS]
    return rng.sample(rows, count)


def upload(client: httpx.Client, name: str, rows: list[dict[str, Any]]) -> str:
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    response = client.post(
        "/v1/datasets", files={"file": (f"{name}.jsonl", body)}, data={"name": name, "kind": "choice"}
    )
    response.raise_for_status()
    return str(response.json()["id"])


def metric(job: dict[str, Any], stage: str, split: str, name: str, layer: int | None = None) -> dict[str, Any] | None:
    """The job's one value of (stage, split, name, layer), or None."""
    found = [
        m for m in job["metrics"] if (m["stage"], m["split"], m["name"], m.get("layer")) == (stage, split, name, layer)
    ]
    if len(found) > 1:
        raise ValueError(f"the API reported {len(found)} values of {stage}/{split}/{name}")
    return found[0] if found else None


def split_of(forgotten: str, evaluated: str) -> str:
    return "forget_heldout" if forgotten == evaluated else f"retain:{evaluated}"


def variance_shares(matrix: dict[str, dict[str, float | None]]) -> dict[str, float] | None:
    """Shares of the cells' variance explained by the column (evaluation task) and by the row (task forgotten)
    means, over the defined cells (two-way main effects, unbalanced where cells are missing)."""
    cells = [(r, c, v) for r, row in matrix.items() for c, v in row.items() if v is not None]
    if len(cells) < 4:
        return None
    grand = statistics.fmean(v for _, _, v in cells)
    total = sum((v - grand) ** 2 for _, _, v in cells)
    if total == 0:
        return None

    def explained(key: int) -> float:
        groups: dict[str, list[float]] = {}
        for cell in cells:
            groups.setdefault(str(cell[key]), []).append(cell[2])
        return sum(len(g) * (statistics.fmean(g) - grand) ** 2 for g in groups.values()) / total

    return {"evaluation_task": explained(1), "forgotten_task": explained(0)}


def plot(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    names: list[str] = []

    def save(fig: Any, suffix: str) -> str:
        fig.tight_layout()
        name = f"{NAME}_{suffix}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        return name

    matrix = results["matrix"]
    grid = [[matrix[r][c]["value"] if matrix[r][c] else float("nan") for c in tasks] for r in tasks]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(grid, vmin=-0.5, vmax=1.5, cmap="viridis")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("evaluated on (unseen rows)")
    ax.set_ylabel("forgotten task")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, "—" if value != value else f"{value:.2f}", ha="center", va="center", color="w")
    fig.colorbar(image, label="forget ratio")
    names.append(save(fig, "matrix"))

    fig, grid_axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), sharey=True, squeeze=False)
    axes = grid_axes[0]
    for ax, task in zip(axes, tasks, strict=True):
        for stage, style in (("finetuned", "-o"), ("forgotten", "-s")):
            points = results["probes"][task].get(stage, {})
            layers = sorted(int(k) for k in points)
            ax.plot(layers, [points[str(layer)] for layer in layers], style, ms=3, label=stage)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(task)
        ax.set_xlabel("layer")
    axes[0].set_ylabel("probe accuracy (forget-heldout)")
    axes[0].legend()
    names.append(save(fig, "probes"))

    fig, grid_axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), sharey=True, squeeze=False)
    axes = grid_axes[0]
    for ax, task in zip(axes, tasks, strict=True):
        for split in ("forget_train", "forget_heldout"):
            points = sorted(
                (p["step"], p["value"])
                for p in results["curves"][task]
                if p["split"] == split and p["name"] == "accuracy"
            )
            ax.plot([s for s, _ in points], [v for _, v in points], "-o", ms=3, label=split)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(f"forgetting {task}")
        ax.set_xlabel("step")
    axes[0].set_ylabel("accuracy")
    axes[0].legend()
    names.append(save(fig, "curves"))
    return names


def interval(m: dict[str, Any] | None) -> str:
    if m is None:
        return "—"
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return f"{m['value']:.2f}"
    return f"{m['value']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"


def write_markdown(results: dict[str, Any], plots: list[str], path: Path) -> None:
    tasks = results["tasks"]
    lines = [
        "# Unforgettable Generalization, reproduced through the API",
        "",
        f"Written by `examples/reproduce/{NAME}.py` on {results['finished_at']} (Lethe commit "
        f"`{results['commit']}`, {results['cpu']}); wall time {results['wall_s'] / 60:.0f} min for "
        f"{len(tasks)} forget jobs. Protocol, deviations from the paper and definitions: the script's docstring.",
        "",
        "Request of every job (forget and retain datasets filled in per task):",
        "",
        "```json",
        json.dumps(results["request"], indent=2),
        "```",
        "",
        "## Forget ratio: task forgotten (rows) × task evaluated on its unseen rows (columns)",
        "",
        "Forget ratio = (accuracy before forgetting − after) / (accuracy before − chance); 1 = back to guessing, "
        "0 = unchanged; 95% paired-bootstrap interval over the rows. Diagonal: forget-heldout (same task, rows "
        f"not trained on); elsewhere: all {results['rows_per_task']} rows of the other task (a retain dataset of the "
        "job). "
        "— = the LM was not above chance on those rows before forgetting (ratio undefined).",
        "",
        "| forgotten \\ evaluated | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for r in tasks:
        lines.append(f"| **{r}** | " + " | ".join(interval(results["matrix"][r][c]) for c in tasks) + " |")
    shares = results["variance_shares"]
    lines += ["", f"![forget ratio matrix]({plots[0]})", ""]
    if shares is not None:
        lines.append(
            f"Share of the defined cells' variance explained by the evaluation task (column means): "
            f"**{shares['evaluation_task']:.2f}**; by the task forgotten (row means): "
            f"**{shares['forgotten_task']:.2f}**. The paper's claim is that the first dominates."
        )
    lines += ["", "## Accuracy at each stage", ""]
    lines += ["| job (forgotten) | split | base | fine-tuned | forgotten |", "|---|---|---|---|---|"]
    for r in tasks:
        for c in tasks:
            split = split_of(r, c)
            cells = [interval(results["accuracy"][r][split].get(s)) for s in ("base", "finetuned", "forgotten")]
            lines.append(f"| {r} | {split} | " + " | ".join(cells) + " |")
        train = [interval(results["accuracy"][r]["forget_train"].get(s)) for s in ("base", "finetuned", "forgotten")]
        lines.append(f"| {r} | forget_train | " + " | ".join(train) + " |")
    lines += ["", "## How each forgetting ended", "", f"![forgetting curves]({plots[2]})", ""]
    lines += ["| job (forgotten) | stop reason | steps | target reached |", "|---|---|---|---|"]
    for r in tasks:
        f = results["forgetting"][r] or {}
        lines.append(f"| {r} | {f.get('stop_reason', '—')} | {f.get('steps', '—')} | {f.get('target_reached', '—')} |")
    lines += [
        "",
        "## Linear probes per layer, before and after forgetting",
        "",
        "Accuracy on forget-heldout of a logistic-regression probe fitted on forget-train hidden states (layer 0 = "
        "embeddings). The paper's shallowness finding is that forgetting leaves these close to where they were.",
        "",
        f"![probes]({plots[1]})",
        "",
    ]
    path.write_text("\n".join(lines) + "\n")


def run(seed: int, tasks: list[str], rows: int, request: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    key = "lethe_repro_" + secrets.token_urlsafe(24)
    port = free_port()
    data_dir = ROOT / ".lethe" / NAME
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LETHE_BOOTSTRAP_API_KEY": key, "LETHE_DATA_DIR": str(data_dir)}
    log = (data_dir / "server.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    jobs: dict[str, dict[str, Any]] = {}
    durations: dict[str, float] = {}
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, server)
        with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=60) as client:
            ids = {task: upload(client, task, task_rows(task, seed, rows)) for task in tasks}
            for task in tasks:
                body = {
                    **request,
                    "seed": seed,
                    "forget_dataset": ids[task],
                    "retain_datasets": [ids[t] for t in tasks if t != task],
                }
                job_started = time.monotonic()
                job_id = client.post("/v1/forget-requests", json=body).raise_for_status().json()["job_id"]
                print(f"{task}: job {job_id}", flush=True)
                jobs[task] = follow(client, job_id)
                durations[task] = time.monotonic() - job_started
                if jobs[task]["status"] != "succeeded":
                    raise SystemExit(f"{task}: job {jobs[task]['status']}: {jobs[task]['error']}")
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()

    matrix = {r: {c: metric(jobs[r], "forgotten", split_of(r, c), "forget_ratio") for c in tasks} for r in tasks}
    accuracy = {
        r: {
            split: {s: metric(jobs[r], s, split, "accuracy") for s in ("base", "finetuned", "forgotten")}
            for split in ["forget_train", *(split_of(r, c) for c in tasks)]
        }
        for r in tasks
    }
    probes = {
        r: {
            stage: {
                str(m["layer"]): m["value"]
                for m in jobs[r]["metrics"]
                if m["name"] == "probe_accuracy" and m["stage"] == stage
            }
            for stage in ("finetuned", "forgotten")
        }
        for r in tasks
    }
    values = {r: {c: (m["value"] if m else None) for c, m in row.items()} for r, row in matrix.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "tasks": tasks,
        "rows_per_task": rows,
        "request": request,
        "seed": seed,
        "matrix": matrix,
        "variance_shares": variance_shares(values),
        "accuracy": accuracy,
        "probes": probes,
        "forgetting": {r: jobs[r].get("forgetting") for r in tasks},
        "curves": {r: jobs[r].get("curves", []) for r in tasks},
        "job_wall_s": durations,
        "wall_s": time.monotonic() - started,
        "cpu": cpu_model(),
        "commit": commit.stdout.strip(),
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--rows", type=int, default=ROWS_PER_TASK, help="rows per task (the paper's protocol: 200+)")
    parser.add_argument("--finetune-epochs", type=int, help="override the request's fine-tune epochs (smoke runs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results (default: docs/results)")
    args = parser.parse_args()
    request = json.loads(json.dumps(REQUEST))
    if args.finetune_epochs is not None:
        request["finetune"]["epochs"] = args.finetune_epochs
    results = run(args.seed, args.tasks, args.rows, request)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(results, indent=2) + "\n")
    plots = plot(results, args.out)
    write_markdown(results, plots, args.out / f"{NAME}.md")
    print(f"wrote {args.out / (NAME + '.md')} in {results['wall_s'] / 60:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
