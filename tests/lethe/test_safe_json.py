"""lethe.safe_json: JSON that would crash a parse, or a write, is refused with where it is."""

import json

import pytest

from lethe import safe_json


def _refusal(text: str) -> str:
    with pytest.raises(safe_json.JSONLimitError) as caught:
        safe_json.loads(text)
    return str(caught.value)


def test_ordinary_json_parses_as_json_does() -> None:
    text = '{"a": [1, -2.5, {"b": "c\\u00e9"}], "n": -12345678901234567890, "t": true, "z": null}'
    assert safe_json.loads(text) == json.loads(text)
    nested = "[" * safe_json.MAX_DEPTH + "]" * safe_json.MAX_DEPTH
    assert safe_json.loads(nested) == json.loads(nested)


def test_nesting_deeper_than_the_limit_names_the_path() -> None:
    text = '{"a": ' * (safe_json.MAX_DEPTH + 1) + "1" + "}" * (safe_json.MAX_DEPTH + 1)
    assert _refusal(text) == ".".join(["a"] * safe_json.MAX_DEPTH) + ": nested deeper than 32 levels"
    assert _refusal('{"x": [[' + "[" * 40 + "]" * 40 + "]]}").startswith("x[0][0]")


def test_nesting_too_deep_for_the_parser_is_refused_with_its_column() -> None:
    assert _refusal("[" * 100_000 + "]" * 100_000) == "nested deeper than 32 levels (column 33)"
    # Brackets inside strings do not count.
    assert _refusal('\n["[[[[", ' + "[" * 100_000 + "]" * 100_001) == (
        "nested deeper than 32 levels (line 2, column 41)"
    )


def test_an_integer_with_too_many_digits_is_named() -> None:
    assert _refusal('{"seed": ' + "9" * 5000 + "}") == "seed: integer has 5000 digits (at most 20)"
    assert _refusal('{"a": [0, -' + "1" * 21 + "]}") == "a[1]: integer has 21 digits (at most 20)"


def test_nan_and_infinity_are_not_json_numbers() -> None:
    assert _refusal('{"learning_rate": NaN}') == "learning_rate: NaN is not a JSON number"
    assert _refusal("[-Infinity]") == "[0]: -Infinity is not a JSON number"


def test_nul_and_lone_surrogates_are_named_in_values_and_keys() -> None:
    assert _refusal('{"prompt": "a\\u0000b"}') == "prompt: contains a NUL character (\\u0000)"
    assert _refusal('{"choices": ["ok", "x\\ud800"]}') == (
        "choices[1]: contains a lone surrogate (\\ud800) at character 1"
    )
    assert _refusal('{"m": {"\\udfff": 1}}') == "m: a key contains a lone surrogate (\\udfff) at character 0"
    # A surrogate pair is one character outside the BMP, not a lone surrogate.
    assert safe_json.loads('"\\ud83d\\ude00"') == "\U0001f600"


def test_malformed_json_is_still_a_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        safe_json.loads('{"a": }')
