import pytest

from lethe.rows import ChoiceRow, chance, split_heldout


def rows(n: int) -> list[ChoiceRow]:
    return [ChoiceRow(prompt=f"q{i}", choices=(" a", " b"), answer=i % 2) for i in range(n)]


def test_choice_row_validates() -> None:
    assert ChoiceRow.from_dict({"prompt": "p", "choices": [" a", " b", " c"], "answer": 2}).choices == (
        " a",
        " b",
        " c",
    )
    with pytest.raises(ValueError):
        ChoiceRow("p", (" a",), 0)
    with pytest.raises(ValueError):
        ChoiceRow("p", (" a", " b"), 2)
    with pytest.raises(ValueError):
        ChoiceRow("p", (" a", ""), 0)


def test_chance_is_the_mean_of_one_over_choices() -> None:
    mixed = [ChoiceRow("p", (" a", " b"), 0), ChoiceRow("p", (" a", " b", " c", " d"), 0)]
    assert chance(mixed) == pytest.approx((0.5 + 0.25) / 2)
    with pytest.raises(ValueError):
        chance([])


def test_split_is_deterministic_in_the_seed() -> None:
    data = rows(50)
    first = split_heldout(data, 0.2, seed=3)
    assert split_heldout(data, 0.2, seed=3) == first
    assert split_heldout(data, 0.2, seed=4) != first
    forget_train, forget_heldout = first
    assert (len(forget_train), len(forget_heldout)) == (40, 10)
    assert sorted(forget_train + forget_heldout, key=lambda r: int(r.prompt[1:])) == data
    # Original order is kept inside each part.
    assert forget_heldout == sorted(forget_heldout, key=lambda r: int(r.prompt[1:]))


def test_split_keeps_both_parts_non_empty() -> None:
    assert [len(part) for part in split_heldout(rows(10), 0.01, seed=0)] == [9, 1]
    assert [len(part) for part in split_heldout(rows(10), 0.99, seed=0)] == [1, 9]
    with pytest.raises(ValueError):
        split_heldout(rows(1), 0.5, seed=0)
    with pytest.raises(ValueError):
        split_heldout(rows(10), 0.0, seed=0)
    with pytest.raises(ValueError):
        split_heldout(rows(10), 1.0, seed=0)
