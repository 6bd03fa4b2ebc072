"""The Index protocol every lethe index implements, and helpers shared by the indexes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from lethe.types import Doc, Hit


@runtime_checkable
class Index(Protocol):
    """A search index with exact deletion (see docs: DESIGN.md section 3)."""

    def add(self, docs: Sequence[Doc]) -> None: ...
    def delete(self, doc_ids: Collection[str]) -> int: ...
    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]: ...
    def __contains__(self, doc_id: object) -> bool: ...
    def __len__(self) -> int: ...
    def save(self, path: Path) -> None: ...
    def fingerprint(self) -> str: ...


def atomic_write_bytes(path: str | Path, write) -> None:  # noqa: ANN001
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
