"""The forget ledger: an append-only, hash-chained record of forget requests and receipts.

Ids are never stored in clear: each is recorded as ``HMAC-SHA256(salt, id)`` with a random salt
kept beside the ledger, so the ledger proves *that* a given id was forgotten (anyone holding the
id and the salt can check) without listing *what* was forgotten. Entries cannot be updated or
deleted (SQLite triggers refuse it) and each entry's hash covers the previous one's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe.errors import LedgerError
from lethe.store.docstore import connect, scrub, transaction

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS entries_request ON entries(request_id);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the forget ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the forget ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS journal (
    request_id TEXT NOT NULL,
    step TEXT NOT NULL,
    done_at REAL NOT NULL,
    result TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (request_id, step)
);
"""


@dataclass(frozen=True)
class Entry:
    """One ledger entry."""

    seq: int
    request_id: str
    kind: str
    payload: dict[str, Any]
    created_at: float
    prev_hash: str
    entry_hash: str


def entry_hash(prev_hash: str, request_id: str, kind: str, payload: str, created_at: float) -> str:
    """The chained hash of one entry."""
    body = json.dumps([prev_hash, request_id, kind, payload, repr(created_at)])
    return hashlib.sha256(body.encode()).hexdigest()


class Ledger:
    """Append-only hash-chained ledger plus a (mutable) step journal for resumable forgetting."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn = connect(self.path)
        self.conn.executescript(_SCHEMA)
        self._salt = self._load_salt()

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def _load_salt(self) -> bytes:
        row = self.conn.execute("SELECT value FROM meta WHERE key='salt'").fetchone()
        if row:
            return bytes.fromhex(row[0])
        salt = secrets.token_bytes(32)
        with transaction(self.conn) as c:
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('salt', ?)", (salt.hex(),))
        return bytes.fromhex(self.conn.execute("SELECT value FROM meta WHERE key='salt'").fetchone()[0])

    # -- hashing -------------------------------------------------------------------------------
    def hash_id(self, value: str, kind: str = "doc") -> str:
        """Salted hash of one id (``kind`` separates doc, owner and query id spaces)."""
        return hmac.new(self._salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    def hash_ids(self, values: Iterable[str], kind: str = "doc") -> list[str]:
        """Salted hashes, sorted (order carries no information)."""
        return sorted(self.hash_id(v, kind) for v in values)

    def request_id(self, doc_ids: Iterable[str], owners: Iterable[str]) -> str:
        """A stable id for a request: the same ids and owners give the same id."""
        parts = self.hash_ids(doc_ids, "doc") + self.hash_ids(owners, "owner")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    # -- entries -------------------------------------------------------------------------------
    def append(self, request_id: str, kind: str, payload: dict[str, Any]) -> Entry:
        """Append one entry to the chain (in a transaction)."""
        body = json.dumps(payload, sort_keys=True, default=str)
        with transaction(self.conn) as c:
            row = c.execute("SELECT entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            now = time.time()
            h = entry_hash(prev, request_id, kind, body, now)
            cur = c.execute(
                "INSERT INTO entries(request_id, kind, payload, created_at, prev_hash, entry_hash) "
                "VALUES (?,?,?,?,?,?)",
                (request_id, kind, body, now, prev, h),
            )
        return Entry(int(cur.lastrowid or 0), request_id, kind, payload, now, prev, h)

    def entries(self, request_id: str | None = None) -> list[Entry]:
        """Every entry (of one request, if given), in order."""
        sql = "SELECT seq, request_id, kind, payload, created_at, prev_hash, entry_hash FROM entries"
        args: tuple[str, ...] = ()
        if request_id is not None:
            sql, args = sql + " WHERE request_id=?", (request_id,)
        rows = self.conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [Entry(s, r, k, json.loads(p), t, ph, eh) for s, r, k, p, t, ph, eh in rows]

    def receipt(self, request_id: str) -> Entry | None:
        """The receipt of a completed request, if any."""
        found = [e for e in self.entries(request_id) if e.kind == "receipt"]
        return found[-1] if found else None

    def verify_chain(self) -> int:
        """Recompute every link; returns the number of entries or raises :class:`LedgerError`."""
        prev = GENESIS
        rows = self.conn.execute(
            "SELECT seq, request_id, kind, payload, created_at, prev_hash, entry_hash "
            "FROM entries ORDER BY seq"
        ).fetchall()
        for seq, rid, kind, payload, created, prev_hash, stored in rows:
            if prev_hash != prev:
                raise LedgerError(f"ledger entry {seq}: prev_hash does not match entry {seq - 1}")
            if entry_hash(prev, rid, kind, payload, created) != stored:
                raise LedgerError(f"ledger entry {seq}: content does not match its hash (tampered)")
            prev = stored
        return len(rows)

    def forgotten_hashes(self, kind: str = "doc") -> set[str]:
        """Salted hashes of every id forgotten by a completed request."""
        out: set[str] = set()
        for e in self.entries():
            if e.kind == "receipt":
                out.update(e.payload.get(f"{kind}_hashes", []))
        return out

    # -- journal -------------------------------------------------------------------------------
    def step_done(self, request_id: str, step: str) -> dict[str, Any] | None:
        """The recorded result of a finished step, or None if it has not finished."""
        row = self.conn.execute(
            "SELECT result FROM journal WHERE request_id=? AND step=?", (request_id, step)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def mark_done(self, request_id: str, step: str, result: dict[str, Any] | None = None) -> None:
        """Record that a step finished (idempotent)."""
        with transaction(self.conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO journal(request_id, step, done_at, result) VALUES (?,?,?,?)",
                (request_id, step, time.time(), json.dumps(result or {}, default=str)),
            )

    def clear_journal(self, request_id: str) -> None:
        """Erase a finished request's journal rows (they held its raw ids while it ran)."""
        with transaction(self.conn) as c:
            c.execute("DELETE FROM journal WHERE request_id=?", (request_id,))
        scrub(self.conn)

    def pending_requests(self) -> list[str]:
        """Requests recorded as pending that have no receipt yet."""
        rows = self.conn.execute(
            "SELECT DISTINCT request_id FROM entries WHERE kind='pending' AND request_id NOT IN "
            "(SELECT request_id FROM entries WHERE kind='receipt') ORDER BY seq"
        ).fetchall()
        return [r[0] for r in rows]


__all__ = ["Entry", "Ledger", "GENESIS", "entry_hash", "sqlite3"]
