"""Every SQLite database of lethe opens here: WAL mode, secure deletion, foreign keys on.

``PRAGMA secure_delete=ON`` makes SQLite overwrite deleted rows (and freed pages) with zeros, so a
deleted document or id does not linger in free space. In WAL mode the old page images live on in the
write-ahead log until a checkpoint; :func:`checkpoint` copies the log into the main file and truncates
the log to zero bytes, so that no forgotten byte survives there either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from lethe.errors import StoreError

#: the pragmas every connection runs, in order
PRAGMAS: tuple[str, ...] = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA secure_delete=ON",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)


def connect(path: str | Path, timeout: float = 5.0) -> sqlite3.Connection:
    """Open (and create) a database: WAL, secure delete, foreign keys; transactions are explicit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=timeout, check_same_thread=False)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception (``DEFERRED``: a read snapshot)."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def checkpoint(conn: sqlite3.Connection) -> None:
    """Push the log's pages (deleted rows already zeroed) into the main file and truncate the log."""
    row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if row and row[0] != 0:
        raise StoreError("could not checkpoint the WAL (another connection holds it); retry")


def free_pages(conn: sqlite3.Connection) -> int:
    """Pages on the free list (with secure delete they hold zeros)."""
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


class SQLiteFile:
    """One database file of the workspace: opened through :func:`connect`, its ``SCHEMA`` applied."""

    SCHEMA: ClassVar[str] = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = connect(self.path)
        self.conn.executescript(self.SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()
