"""A tiny LM that has learnt the task (so there is something to forget), split into forget and retain rows."""

from __future__ import annotations

import pytest

from lethe.rows import ChoiceRow, Row
from tests.engine.methods.helpers import Task, teach
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import LoadedLM


@pytest.fixture(scope="session")
def task(tiny_base: LoadedLM) -> Task:
    """The tiny LM fully fine-tuned on the task; forget = rows whose answer is fruit, retain = tool."""
    rows: list[Row] = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(96, seed=0)]
    lm = teach(tiny_base.lm, tiny_base.tokenizer, rows)
    forget = [row for row in rows if row.target == " fruit"][:16]
    retain = [row for row in rows if row.target == " tool"][:16]
    return Task(lm, tiny_base.tokenizer, forget, retain)
