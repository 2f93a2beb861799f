"""Write the demo's choice datasets from ../shared/datasets (normalised PIQA, ARC-Easy, CSQA2, BoolQ).

Prompts follow lm-evaluation-harness's templates for these tasks ("Question: ...\\nAnswer:"), and each choice
starts with a space, as the API appends choices to the prompt as given.
"""

import json
import random
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "binary_tasks"
OUT = Path(__file__).resolve().parent / "data"

TASKS = {
    "piqa": SHARED / "piqa" / "normalized.jsonl",
    "arc_easy": SHARED / "arc" / "normalized_arc_easy.jsonl",
}


def choice_row(record: dict) -> dict:
    return {
        "prompt": f"Question: {record['question']}\nAnswer:",
        "choices": [" " + c.strip() for c in record["choices"]],
        "answer": record["label"],
    }


def write_sample(task: str, count: int, seed: int, max_chars: int, name: str) -> Path:
    records = [json.loads(line) for line in TASKS[task].read_text().splitlines() if line.strip()]
    # Short rows keep a CPU demo in minutes; the sample is seeded so the files are reproducible.
    records = [r for r in records if len(r["question"]) + max(len(c) for c in r["choices"]) <= max_chars]
    sample = random.Random(seed).sample(records, count)
    path = OUT / f"{task}_{name}.jsonl"
    path.write_text("".join(json.dumps(choice_row(r)) + "\n" for r in sample))
    return path


# (task, rows, longest question + choice in characters, file suffix): the demo's forget and retain sets.
SAMPLES = [("piqa", 96, 160, "demo"), ("arc_easy", 32, 160, "demo")]

if __name__ == "__main__":
    for task, count, max_chars, name in SAMPLES:
        print(write_sample(task, count, seed=0, max_chars=max_chars, name=name))
