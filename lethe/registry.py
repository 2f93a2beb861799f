"""A name → item registry that refuses duplicates and unknown names, and the import paths items name their
implementations by (torch-free: nothing is imported until resolved)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the allowed names."""

    def __init__(self, kind: str, name: str, allowed: list[str]) -> None:
        super().__init__(name)
        self.kind = kind
        self.name = name
        self.allowed = allowed

    def __str__(self) -> str:
        # KeyError.__str__ would print only the repr of the key.
        return f"unknown {self.kind} {self.name!r}; allowed: {', '.join(self.allowed) or '(none)'}"


class Registry(Generic[T]):
    """Items registered once under unique names, listed in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Add `item` under `name`; a name can be registered only once."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item registered under `name` (UnknownNameError otherwise)."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, item) pairs, in registration order."""
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def resolve(path: str) -> Any:
    """The object at "package.module:attribute", imported on first use."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
