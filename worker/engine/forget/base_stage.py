"""The base stage's scores, kept for the next job on the same base LM and rows: the base LM never changes, so a
second job on the same base and data (a user's retry, another method, another learning rate) need not evaluate it
again, and starts training within a couple of seconds of its claim instead of after every split's scoring.

What is kept: everything the base-stage evaluation of `forget.run` produces (its metrics, its per-example values and
the evaluation itself, the probes' hidden states included), under a key that names everything the scores depend on
(`base_stage_key`):
- the base LM's weights: a hash of every tensor's bytes (`weights_digest`, computed once per loaded LM), not its
  name, so a base model re-registered with other weights under the same name never hits;
- every split's rows, by name (forget-train and forget-heldout separately: another heldout split is another key);
- the scoring settings: batch size, seed, whether hidden states were collected, the precision scoring runs in
  (LETHE_PRECISION and whether it autocasts on this device), the metrics' own settings (generation length, MIA
  attacks, Min-K fraction), and the versions of Lethe, torch and transformers.

Where it lives: in the worker process's memory, beside the base LM its `BaseLMCache` keeps (the second job of a
base on the same worker hits; one claimed by another worker evaluates again, and a restarted worker starts empty).
Not on disk or in the object store: the entries hold hidden states and result objects with no safe serialized form
yet (weights and results are never unpickled), and a worker that has the base LM loaded is the one that benefits.
A few entries at most (`MAX_ENTRIES`, least recently used dropped): each is a few MB at most (hidden states of the
forget splits' rows), small beside the base LM.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import torch

from lethe.rows import Row
from worker.engine.lm.load import CausalLM
from worker.engine.metrics import evaluate
from worker.engine.metrics.privacy import MIN_K_FRACTION
from worker.engine.metrics.values import MetricValue
from worker.engine.precision import configured_precision, mixed_precision_enabled

MAX_ENTRIES = 4
# Bumped whenever what the base stage computes changes in a way the versions below would not show.
FORMAT = 1

_digests: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
_digests_lock = threading.Lock()


def weights_digest(lm: CausalLM) -> str:
    """A hash of every parameter and buffer of `lm` (names, dtypes, shapes, bytes); computed once per LM object.

    The cached base LM is frozen and never changed in place (jobs attach their adapters to it and remove them
    again, `lora.attached`), so its digest stays valid for as long as the object lives. Taken with no adapter on it.
    """
    with _digests_lock:
        if lm not in _digests:
            digest = hashlib.blake2b(digest_size=32)
            for name, tensor in sorted(lm.state_dict().items()):
                tensor = tensor.detach().to("cpu").contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy of the bytes
            _digests[lm] = digest.hexdigest()
        return _digests[lm]


def _rows_digest(rows: Sequence[Row]) -> str:
    encoded = json.dumps([[type(row).__name__, dataclasses.asdict(row)] for row in rows], sort_keys=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


def base_stage_key(
    lm: CausalLM,
    splits: Mapping[str, Sequence[Row]],
    *,
    batch_size: int,
    seed: int,
    collect_hidden: bool,
) -> str:
    """The cache key of the base stage of `lm` on `splits` (split name → rows) with these scoring settings."""
    device = next(lm.parameters()).device
    key = {
        "format": FORMAT,
        "weights": weights_digest(lm),
        "splits": {name: _rows_digest(rows) for name, rows in splits.items()},
        "batch_size": batch_size,
        "seed": seed,
        "collect_hidden": collect_hidden,
        "precision": configured_precision(),
        "autocast": mixed_precision_enabled(device),
        "device": str(device),
        "metrics": {
            "qa_max_new_tokens": evaluate.QA_MAX_NEW_TOKENS,
            "mia_attacks": list(evaluate.MIA_ATTACKS),
            "min_k_fraction": MIN_K_FRACTION,
        },
        "versions": {package: version(package) for package in ("lethe", "torch", "transformers")},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass
class BaseStage:
    """What the base-stage evaluation produced: its metrics, per-example values (per split), the evaluation (an
    opaque `_Evaluation` of `forget.run`), and the progress units it advanced."""

    metrics: list[MetricValue]
    per_example: dict[str, dict[str, list[float | None]]]  # the base stage's: split → metric → per row
    evaluation: Any
    progress_units: float

    def copy(self) -> BaseStage:
        """A copy a job may change (it adds to its per-example values, clears the probes' hidden states)."""
        evaluation = copy.copy(self.evaluation)
        for name, value in vars(evaluation).items():
            if isinstance(value, dict):
                setattr(evaluation, name, dict(value))
        return BaseStage(list(self.metrics), copy.deepcopy(self.per_example), evaluation, self.progress_units)


class BaseStageCache:
    """The last `MAX_ENTRIES` base stages by key, shared by the jobs of one worker process (thread-safe)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, BaseStage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> BaseStage | None:
        """A copy of the entry under `key`, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.copy()

    def put(self, key: str, stage: BaseStage) -> None:
        """Keep a copy of `stage` under `key` (dropping the least recently used beyond `max_entries`)."""
        with self._lock:
            self._entries[key] = stage.copy()
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# The worker process's cache: what `run_forget` uses unless it is handed another.
BASE_STAGES = BaseStageCache()
