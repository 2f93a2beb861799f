"""Dataset rows of the three kinds (choice, qa, text), chance accuracy and the forget-train / forget-heldout split.

The one definition of a valid row: the API validates uploads with `parse_row` and the engine builds the same
types, so a row the API accepts is a row the engine can run (and a row the engine builds obeys the API's rules).
A bad row raises RowError naming the field and what is allowed.

Every row is turned into one *example* the methods train on: a context and a target continuation. A choice row's
target is its true choice after the prompt; a qa row's is the answer after the `QA_TEMPLATE` question; a text
row's is the whole passage after an empty context (the EOS token stands for it, as in lm-eval).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lethe.safe_json import string_problem

# How a question is put to the LM (and an answer continued). Plain text, not a chat template, so any causal LM
# (base or instruct) reads it the same way; TOFU's own scripts use a model-specific chat template instead.
QA_TEMPLATE = "Question: {question}\nAnswer:"


class RowError(ValueError):
    """A row that breaks its kind's rules: `field` names the offending field (e.g. `choices[1]`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _require_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RowError(field, "must be a non-empty string")
    if problem := string_problem(value):
        raise RowError(field, problem)
    return value


def _check_fields(row: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    missing = sorted(required - row.keys())
    if missing:
        raise RowError(missing[0], "is required")
    unknown = sorted(row.keys() - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise RowError(unknown[0], f"is not a field of this kind (allowed: {allowed})")


def _string_list(value: object, field: str, empty: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RowError(field, empty)
    return tuple(_require_text(item, f"{field}[{index}]") for index, item in enumerate(value))


@dataclass(frozen=True)
class ChoiceRow:
    """One multiple-choice example: the prompt, its distinct choices (appended to the prompt as given), the answer.

    Choices must differ: two equal choices score equally, so which of them is "the answer" would be arbitrary.
    """

    prompt: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        _require_text(self.prompt, "prompt")
        if len(self.choices) < 2:
            raise RowError("choices", "must be a list of at least 2 strings")
        for index, choice in enumerate(self.choices):
            _require_text(choice, f"choices[{index}]")
        if len(set(self.choices)) != len(self.choices):
            raise RowError("choices", "must not repeat a choice")
        if (
            isinstance(self.answer, bool)
            or not isinstance(self.answer, int)
            or not 0 <= self.answer < len(self.choices)
        ):
            raise RowError(
                "answer", f"must be an integer index into choices (0..{len(self.choices) - 1}), got {self.answer!r}"
            )

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ChoiceRow:
        """A row from a `choice` dataset line: {"prompt", "choices", "answer"}."""
        _check_fields(row, required={"prompt", "choices", "answer"}, optional=set())
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise RowError("choices", "must be a list of at least 2 strings")
        return cls(prompt=row["prompt"], choices=_string_list(choices, "choices", ""), answer=row["answer"])

    @property
    def context(self) -> str:
        return self.prompt

    @property
    def target(self) -> str:
        return self.choices[self.answer]


@dataclass(frozen=True)
class QARow:
    """A fact as a question and its answer, optionally with a paraphrase of each and wrong (perturbed) answers.

    TOFU's rows carry all of them; the truth ratio needs `paraphrased_answer` and `perturbed_answers`. Perturbed
    answers differ from the answer and from each other: probes and the truth ratio score them as distinct options.
    """

    question: str
    answer: str
    paraphrased_question: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require_text(self.question, "question")
        _require_text(self.answer, "answer")
        for field in ("paraphrased_question", "paraphrased_answer"):
            if getattr(self, field) is not None:
                _require_text(getattr(self, field), field)
        for index, perturbed in enumerate(self.perturbed_answers):
            _require_text(perturbed, f"perturbed_answers[{index}]")
        if len({self.answer, *self.perturbed_answers}) != 1 + len(self.perturbed_answers):
            raise RowError("perturbed_answers", "must differ from the answer and from each other")

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> QARow:
        """A row from a `qa` dataset line: {"question", "answer", optional "paraphrased_question",
        "paraphrased_answer", "perturbed_answers": [..]}."""
        optional = {"paraphrased_question", "paraphrased_answer", "perturbed_answers"}
        _check_fields(row, required={"question", "answer"}, optional=optional)
        perturbed = row.get("perturbed_answers")
        if perturbed is not None and (not isinstance(perturbed, list) or not perturbed):
            raise RowError("perturbed_answers", "must be a non-empty list of strings (or left out)")
        return cls(
            question=row["question"],
            answer=row["answer"],
            paraphrased_question=row.get("paraphrased_question"),
            paraphrased_answer=row.get("paraphrased_answer"),
            perturbed_answers=_string_list(perturbed, "perturbed_answers", "") if perturbed is not None else (),
        )

    @property
    def context(self) -> str:
        return QA_TEMPLATE.format(question=self.question)

    @property
    def target(self) -> str:
        return " " + self.answer

    def context_for(self, question: str) -> str:
        """The context that asks `question` (e.g. the paraphrased one) in the same template."""
        return QA_TEMPLATE.format(question=question)


@dataclass(frozen=True)
class TextRow:
    """A passage the LM may have memorized verbatim (MUSE-style)."""

    text: str

    def __post_init__(self) -> None:
        _require_text(self.text, "text")

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> TextRow:
        """A row from a `text` dataset line: {"text"}."""
        _check_fields(row, required={"text"}, optional=set())
        return cls(text=row["text"])

    @property
    def context(self) -> str:
        return ""

    @property
    def target(self) -> str:
        return self.text


Row = ChoiceRow | QARow | TextRow
RowT = TypeVar("RowT", bound=ChoiceRow | QARow | TextRow)

# The kinds of dataset (the keys of ROW_TYPES), as a type: the API's enum of them, the kinds a method or attack takes.
DatasetKind = Literal["choice", "qa", "text"]

ROW_TYPES: dict[str, type[ChoiceRow] | type[QARow] | type[TextRow]] = {
    "choice": ChoiceRow,
    "qa": QARow,
    "text": TextRow,
}


def parse_row(kind: str, row: Mapping[str, Any]) -> Row:
    """The row of dataset `kind` (choice|qa|text) that a dataset line describes; RowError if it breaks a rule."""
    if kind not in ROW_TYPES:
        raise ValueError(f"unknown dataset kind {kind!r} (allowed: {', '.join(ROW_TYPES)})")
    return ROW_TYPES[kind].from_dict(row)


def rows_from_dicts(kind: str, dicts: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Rows of dataset `kind` (choice|qa|text) from its dataset lines."""
    return [parse_row(kind, row) for row in dicts]


def kind_of(rows: Sequence[Row]) -> str:
    """The one kind of a non-empty list of rows."""
    kinds = {name for row in rows for name, row_type in ROW_TYPES.items() if isinstance(row, row_type)}
    if len(kinds) != 1:
        raise ValueError(f"rows must be of exactly one kind, got {sorted(kinds)}")
    return kinds.pop()


def chance(rows: Sequence[ChoiceRow]) -> float:
    """Expected accuracy of uniform guessing: the mean of 1 / number of choices."""
    if not rows:
        raise ValueError("chance of an empty set of rows is undefined")
    return sum(1 / len(row.choices) for row in rows) / len(rows)


def heldout_count(n: int, heldout_fraction: float) -> int:
    """Rows held out of `n` before clamping: round(n * heldout_fraction) (the API refuses 0 and n)."""
    return round(n * heldout_fraction)


def split_heldout(rows: Sequence[RowT], heldout_fraction: float, seed: int) -> tuple[list[RowT], list[RowT]]:
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
