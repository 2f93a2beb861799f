import pytest

from lethe.rows import ChoiceRow, RowError, chance, parse_row, split_heldout


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


@pytest.mark.parametrize(
    ("kind", "row", "field", "message"),
    [
        ("choice", {"prompt": "p\x00", "choices": [" a", " b"], "answer": 0}, "prompt", "contains a NUL character"),
        (
            "choice",
            {"prompt": "p", "choices": [" a", " \ud800"], "answer": 0},
            "choices[1]",
            "contains a lone surrogate",
        ),
        (
            "qa",
            {"question": "q", "answer": "a", "perturbed_answers": ["b\x00"]},
            "perturbed_answers[0]",
            "contains a NUL",
        ),
        ("text", {"text": "\udc80 passage"}, "text", "contains a lone surrogate (\\udc80) at character 0"),
    ],
)
def test_rows_refuse_strings_no_store_can_hold(kind: str, row: dict, field: str, message: str) -> None:
    # The one row definition: the API's upload check and the worker's rows both refuse them.
    with pytest.raises(RowError) as caught:
        parse_row(kind, row)
    assert caught.value.field == field
    assert caught.value.message.startswith(message)


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
