"""The splits of a forget run: their names, rows and kinds, and the accuracy of guessing on the choice splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lethe.rows import ChoiceRow, Row, TextRow, chance, kind_of

FORGET_TRAIN = "forget_train"
FORGET_HELDOUT = "forget_heldout"
FORGET_SPLITS = (FORGET_TRAIN, FORGET_HELDOUT)
RETAIN_PREFIX = "retain:"
GENERAL_TEXT = "utility:general_text"


class Splits:
    """Rows by split name, in order: forget-train, forget-heldout, `retain:<name>` per retain set, the general text."""

    def __init__(
        self,
        forget_train: Sequence[Row],
        forget_heldout: Sequence[Row],
        retain: Mapping[str, Sequence[Row]],
        general_text: Sequence[TextRow],
    ) -> None:
        self.rows: dict[str, Sequence[Row]] = {FORGET_TRAIN: forget_train, FORGET_HELDOUT: forget_heldout}
        self.rows.update({f"{RETAIN_PREFIX}{name}": rows for name, rows in retain.items()})
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
