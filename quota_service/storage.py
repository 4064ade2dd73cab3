"""Files kept outside the database (closing reports, slides), behind one small interface.

A key is a relative, slash-separated name such as ``closing/7/3f2a.../final-report.pdf``;
the database stores the key, the store keeps the bytes. ``LocalFileStore`` is the embedded
default (a folder); another store (e.g. an object store) only needs the same four methods.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class FileStore(Protocol):
    def save(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, all or nothing (never a half-written file)."""

    def read(self, key: str) -> bytes:
        """The bytes under ``key``; FileNotFoundError when there are none."""

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is not there."""

    def exists(self, key: str) -> bool: ...


class LocalFileStore:
    """Files in a folder on this machine: written to a temporary file in the same folder,
    flushed to disk, then renamed into place (atomic on POSIX)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            raise ValueError(f"bad file key: {key!r}")
        path = self.root.joinpath(*parts)
        root = self.root.resolve()
        if root not in path.resolve().parents:
            raise ValueError(f"bad file key: {key!r}")
        return path

    def save(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # drop the now empty folders of this key, never the root
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()


class StagedFiles:
    """Files written before the transaction that records them, all or nothing: leaving the
    ``with`` block by an exception removes the files written in it (no committed row names
    them); leaving it normally removes the files marked replaced, which the committed rows
    no longer name. Removal failures are logged, never raised over the outcome."""

    def __init__(self, store: FileStore):
        self.store = store
        self.written: list[str] = []
        self.replaced: list[str] = []

    def save(self, key: str, data: bytes) -> str:
        self.store.save(key, data)
        self.written.append(key)
        return key

    def replace(self, key: str) -> None:
        """``key`` is to be removed once the transaction that stops naming it has committed."""
        self.replaced.append(key)

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        failed = kind is not None
        for key in self.written if failed else self.replaced:
            try:
                self.store.delete(key)
            except (OSError, ValueError):
                log.warning(
                    "could not remove %s %s",
                    "the file just written," if failed else "the replaced file",
                    key,
                    exc_info=True,
                )
