"""Atomic writes of files and folders: write aside, fsync, rename over the target (a reader sees the old or the
new one, never a half-written one). The one helper the store, ledger, registry, indexes and caches use."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON (values JSON cannot hold, like paths, become strings)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str).encode("utf-8")
    atomic_write_bytes(path, lambda fh: fh.write(text))


def atomic_write_dir(out_dir: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_dir)`` on a fresh folder beside ``out_dir``, then rename it to ``out_dir`` (a folder
    another process put there first is kept: the winner of a race stays)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not out_dir.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
