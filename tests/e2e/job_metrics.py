"""Reading a job's metrics as the API returns them, and scoring an LM independently of the engine, for e2e tests."""

from typing import Any

import torch

from lethe.rows import ChoiceRow


def final_metrics(job: dict[str, Any]) -> dict[tuple[str, str, str, Any], float]:
    """The job's value of every (stage, split, name, layer): `metrics` holds one each (curve points are apart)."""
    return {(m["stage"], m["split"], m["name"], m["layer"]): m["value"] for m in job["metrics"]}


def choice_accuracy(lm: Any, tokenizer: Any, rows: list[ChoiceRow]) -> float:
    """lm-eval's `acc` in a few lines, not the engine's scorer: each choice scored by the sum of its tokens'
    log-probabilities after the prompt (prompt + choice tokenized whole, the choice's tokens being those past the
    prompt's), one unpadded forward pass per choice, argmax."""
    correct = 0
    for row in rows:
        context = tokenizer.encode(row.prompt, add_special_tokens=False)
        scores = []
        for choice in row.choices:
            ids = tokenizer.encode(row.prompt + choice, add_special_tokens=False)
            with torch.no_grad():
                log_probs = lm(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
            scores.append(sum(float(log_probs[t - 1, ids[t]]) for t in range(len(context), len(ids))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row.answer)
    return correct / len(rows)
