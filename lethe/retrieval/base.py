"""The Index protocol every lethe index implements, and helpers shared by the indexes."""

from __future__ import annotations

import pickle
import zipfile
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from lethe.errors import IndexError_
from lethe.store.files import atomic_write_bytes
from lethe.types import Doc, Hit

__all__ = ["INDEX_READ_ERRORS", "Index", "atomic_write_bytes", "check_index_file", "corrupt_index", "rebuild_hint"]

#: what reading a damaged ``.npz`` index (or its metadata) can raise
INDEX_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, KeyError, TypeError, IndexError, RuntimeError,
    zipfile.BadZipFile, zlib.error, pickle.UnpicklingError, IndexError_,
)


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


def rebuild_hint(path: str | Path) -> str:
    """``rebuild it with `lethe index --home <workspace>``` for an index file at ``<home>/indexes/<name>.npz``."""
    return f"rebuild it with `lethe index --home {Path(path).parent.parent}`"


def check_index_file(path: Path) -> None:
    """Raise :class:`IndexError_` (one line, with the rebuild hint) if ``path`` is missing or a directory."""
    if path.is_dir():
        raise IndexError_(f"{path}: is a directory, expected an index file; move it away and {rebuild_hint(path)}")
    if not path.exists():
        raise IndexError_(f"{path}: index file missing; {rebuild_hint(path)}")


def corrupt_index(path: Path, kind: str, exc: BaseException) -> IndexError_:
    """The one-line error for an index file that exists but cannot be read back."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    return IndexError_(
        f"{path}: corrupt or truncated index file (not a lethe {kind} index: {detail}); {rebuild_hint(path)}"
    )
