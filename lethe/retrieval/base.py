"""The Index protocol every lethe index implements, and helpers shared by the indexes."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from lethe.errors import IndexError_
from lethe.types import Doc, Hit

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
