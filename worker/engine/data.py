"""Multiple-choice rows, chance accuracy and the forget-train / forget-heldout split."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChoiceRow:
    """One multiple-choice example: the prompt, its choices (appended to the prompt as given), the answer."""

    prompt: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"a choice row needs at least 2 choices, got {len(self.choices)}")
        if any(choice == "" for choice in self.choices):
            raise ValueError("choices must be non-empty strings")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer {self.answer} is not an index into {len(self.choices)} choices")

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ChoiceRow:
        """A row from a validated `choice` dataset line: {"prompt", "choices", "answer"}."""
        return cls(prompt=row["prompt"], choices=tuple(row["choices"]), answer=int(row["answer"]))


def chance(rows: Sequence[ChoiceRow]) -> float:
    """Expected accuracy of uniform guessing: the mean of 1 / number of choices."""
    if not rows:
        raise ValueError("chance of an empty set of rows is undefined")
    return sum(1 / len(row.choices) for row in rows) / len(rows)


def heldout_count(n: int, heldout_fraction: float) -> int:
    """Rows held out of `n` before clamping: round(n * heldout_fraction) (the API refuses 0 and n)."""
    return round(n * heldout_fraction)


def split_heldout(
    rows: Sequence[ChoiceRow], heldout_fraction: float, seed: int
) -> tuple[list[ChoiceRow], list[ChoiceRow]]:
    """(forget_train, forget_heldout): a seeded random split, both parts non-empty, original order kept.

    The heldout size is round(n * heldout_fraction) clamped to [1, n - 1]; ValueError when the fraction is
    not in (0, 1) or there are fewer than 2 rows.
    """
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    n = len(rows)
    if n < 2:
        raise ValueError(f"cannot split {n} row(s) into non-empty forget-train and forget-heldout sets")
    n_heldout = min(max(heldout_count(n, heldout_fraction), 1), n - 1)
    # Only Random.random() is guaranteed to give the same sequence for a seed across Python versions
    # (sample/shuffle may change), so rank the rows by one random key each and hold out the lowest.
    rng = random.Random(seed)
    keys = [rng.random() for _ in range(n)]
    heldout = set(sorted(range(n), key=keys.__getitem__)[:n_heldout])
    forget_train = [row for i, row in enumerate(rows) if i not in heldout]
    forget_heldout = [row for i, row in enumerate(rows) if i in heldout]
    return forget_train, forget_heldout
