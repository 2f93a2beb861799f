"""The object store interface: write-once objects addressed by key (and a few replaced whole: `replace`)."""

from collections.abc import Iterator
from typing import Protocol


class ObjectExistsError(Exception):
    """Raised when a key is written twice: objects are write-once."""


class ObjectNotFoundError(KeyError):
    """Raised when a key does not exist."""


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`; ObjectExistsError if the key already exists."""
        ...

    def replace(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key` whether or not it exists: a reader gets the old object or the new one, whole
        (a checkpoint's manifest, which points at the checkpoint's other objects)."""
        ...

    def get(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove `key` (used only to undo a write whose catalogue row failed)."""
        ...

    def check(self) -> None:
        """Raise if the store cannot be reached (readiness)."""
        ...
