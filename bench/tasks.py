"""The benchmark's choice rows, and the same rows as a local lm-evaluation-harness task (YAML over jsonl).

Both sides score the same strings: the prompt as the context and each choice, already starting with its
space, as the continuation (so the task's `target_delimiter` is "").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lethe.rows import ChoiceRow

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "binary_tasks"

# lm-eval's own arc_easy and piqa prompts ("Question: ...\nAnswer:", choices after a space).
_TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@dataclass(frozen=True)
class BenchTask:
    """A named set of rows (the first `n_rows` of a normalized dataset file, in file order)."""

    name: str
    source: Path
    split: str | None

    def rows(self, n_rows: int) -> list[ChoiceRow]:
        """The first `n_rows` rows of the split, as lm-eval's prompt formats them."""
        rows = []
        with self.source.open() as lines:
            for line in lines:
                record = json.loads(line)
                if self.split is not None and record.get("split") != self.split:
                    continue
                choices = tuple(" " + choice for choice in record["choices"])
                rows.append(ChoiceRow(f"Question: {record['question']}\nAnswer:", choices, record["label"]))
                if len(rows) == n_rows:
                    break
        return rows


TASKS = {
    "arc_easy": BenchTask("arc_easy", DATASETS / "arc" / "normalized_arc_easy.jsonl", "test"),
    "piqa": BenchTask("piqa", DATASETS / "piqa" / "normalized.jsonl", None),
}


def write_lmeval_task(name: str, rows: list[ChoiceRow], directory: Path) -> str:
    """Write rows and a task YAML over them into `directory` (lm-eval's include_path); the task's name."""
    directory.mkdir(parents=True, exist_ok=True)
    task_name = f"lethe_bench_{name}"
    data_file = directory / f"{task_name}.jsonl"
    with data_file.open("w") as out:
        for row in rows:
            out.write(json.dumps({"prompt": row.prompt, "choices": list(row.choices), "answer": row.answer}) + "\n")
    (directory / f"{task_name}.yaml").write_text(_TASK_YAML.format(name=task_name, data_file=data_file))
    return task_name
