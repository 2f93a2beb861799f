"""Local-directory object store (the embedded default)."""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from storage.base import ObjectExistsError, ObjectNotFoundError


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or ".." in parts:
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _written_beside(self, key: str, data: bytes) -> tuple[Path, str]:
        """The key's path, and a temp file beside it holding `data` (to be linked or renamed into place)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        return path, tmp

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        # Link the temp file into place: link fails if the key exists, so two writers cannot both succeed and a
        # reader never sees a half-written object.
        path, tmp = self._written_beside(key, data)
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise ObjectExistsError(key) from exc
        finally:
            os.unlink(tmp)

    def replace(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        # Rename the temp file over the key: rename is atomic, so a reader never sees half of it.
        path, tmp = self._written_beside(key, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(key) from exc

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(key) from exc
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"object store directory {self.root} is not writable")
