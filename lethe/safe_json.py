"""JSON with limits: how every request body and every dataset line is parsed.

Python's json parses any nesting until the stack runs out (RecursionError), integers up to 4300 digits (then
ValueError) and NaN / Infinity (not JSON), and its strings may hold NUL characters (PostgreSQL text cannot) and lone
surrogates (no UTF-8 encoding: they fail wherever the string is written). `loads` refuses each of them with a
JSONLimitError that names where it is: `method.params.refusals[3]`, `choices[1]`.
"""

import json
import re
from typing import Any

MAX_DEPTH = 32
# int64 and uint64 fit; every integer Lethe takes (seeds, steps, indexes) is far smaller.
MAX_INT_DIGITS = 20


class JSONLimitError(ValueError):
    """Valid JSON Lethe refuses: `path` says where (empty for the document as a whole), `message` what is wrong."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class _Refused:
    """Stands in for a number the parser met and refused, until the walk finds its path."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parse_int(digits: str) -> int | _Refused:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused(f"integer has {len(digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


def _parse_constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


_SURROGATE = re.compile("[\ud800-\udfff]")


def string_problem(text: str) -> str | None:
    """What makes `text` unstorable (a NUL character, a lone surrogate), or None."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    surrogate = None if text.isascii() else _SURROGATE.search(text)
    if surrogate is not None:
        return f"contains a lone surrogate (\\u{ord(surrogate.group()):04x}) at character {surrogate.start()}"
    return None


def loads(text: str) -> Any:
    """The value `text` holds; json.JSONDecodeError if it is not JSON, JSONLimitError if it breaks a limit."""
    try:
        value = json.loads(text, parse_int=_parse_int, parse_constant=_parse_constant)
    except RecursionError:
        raise JSONLimitError("", f"nested deeper than {MAX_DEPTH} levels ({_too_deep_at(text)})") from None
    _check(value)
    return value


def _render(path: tuple[str | int, ...]) -> str:
    # ("method", "params", "refusals", 3) -> "method.params.refusals[3]"
    rendered = ""
    for part in path:
        rendered += f"[{part}]" if isinstance(part, int) else (f".{part}" if rendered else part)
    return rendered


def _leaf_problem(value: Any) -> str | None:
    if isinstance(value, _Refused):
        return value.reason
    return string_problem(value) if isinstance(value, str) else None


def _check(value: Any) -> None:
    """Raise JSONLimitError at a refused number, an unstorable string (or key) or a container nested too deep."""
    if not isinstance(value, dict | list):
        if problem := _leaf_problem(value):
            raise JSONLimitError("", problem)
        return
    # Containers with their path; a leaf's path is built only when it is refused.
    stack: list[tuple[dict[str, Any] | list[Any], tuple[str | int, ...]]] = [(value, ())]
    while stack:
        container, path = stack.pop()
        if len(path) >= MAX_DEPTH:  # the document is level 1, so this container is level len(path) + 1
            raise JSONLimitError(_render(path), f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(container, dict):
            for key in container:
                if problem := string_problem(key):
                    raise JSONLimitError(_render(path), f"a key {problem}")
            children: Any = container.items()
        else:
            children = enumerate(container)
        for key, child in children:
            if isinstance(child, dict | list):
                stack.append((child, (*path, key)))
            elif problem := _leaf_problem(child):
                raise JSONLimitError(_render((*path, key)), problem)


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep_at(text: str) -> str:
    """Where in `text` the first container deeper than MAX_DEPTH opens (strings skipped whole)."""
    depth = 0
    for token in _TOKEN.finditer(text):
        if token.group() in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                position = token.start()
                line = text.count("\n", 0, position) + 1
                column = position - text.rfind("\n", 0, position)
                return f"line {line}, column {column}" if line > 1 else f"column {column}"
        elif token.group() in ("]", "}"):
            depth -= 1
    return "position unknown"
