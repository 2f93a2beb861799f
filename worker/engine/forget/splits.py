"""The splits of a forget run: their names, rows and kinds, and the accuracy of guessing on the choice splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lethe.rows import ChoiceRow, Row, TextRow, chance, kind_of

FORGET_TRAIN = "forget_train"
FORGET_HELDOUT = "forget_heldout"
FORGET_SPLITS = (FORGET_TRAIN, FORGET_HELDOUT)
RETAIN_PREFIX = "retain:"
GENERAL_TEXT = "utility:general_text"
# A stacked run's parent (and ancestor) forget sets, each split as its own job split it: `<prefix><dataset name>`.
PARENT_FORGET_TRAIN_PREFIX = "parent_forget_train:"
PARENT_FORGET_HELDOUT_PREFIX = "parent_forget_heldout:"


class Splits:
    """Rows by split name, in order: forget-train, forget-heldout, `retain:<name>` per retain set, a stacked run's
    `parent_forget_train:<name>` and `parent_forget_heldout:<name>` per forget set of its parent and ancestors
    (`parent_forget`: (train, heldout) rows by dataset name), the general text."""

    def __init__(
        self,
        forget_train: Sequence[Row],
        forget_heldout: Sequence[Row],
        retain: Mapping[str, Sequence[Row]],
        general_text: Sequence[TextRow],
        parent_forget: Mapping[str, tuple[Sequence[Row], Sequence[Row]]] | None = None,
    ) -> None:
        self.rows: dict[str, Sequence[Row]] = {FORGET_TRAIN: forget_train, FORGET_HELDOUT: forget_heldout}
        self.rows.update({f"{RETAIN_PREFIX}{name}": rows for name, rows in retain.items()})
        for name, (train_rows, heldout_rows) in (parent_forget or {}).items():
            self.rows[f"{PARENT_FORGET_TRAIN_PREFIX}{name}"] = train_rows
            self.rows[f"{PARENT_FORGET_HELDOUT_PREFIX}{name}"] = heldout_rows
        if general_text:
            self.rows[GENERAL_TEXT] = general_text
        self.kinds = {split: kind_of(rows) for split, rows in self.rows.items()}
        self.chances = {
            split: chance([row for row in rows if isinstance(row, ChoiceRow)])
            for split, rows in self.rows.items()
            if self.kinds[split] == "choice"
        }

    @property
    def retain(self) -> list[str]:
        """The retain splits' names."""
        return [split for split in self.rows if split.startswith(RETAIN_PREFIX)]

    @property
    def tracked(self) -> list[str]:
        """The splits whose primary score is tracked while forgetting: all but the general text."""
        return [split for split in self.rows if split != GENERAL_TEXT]
