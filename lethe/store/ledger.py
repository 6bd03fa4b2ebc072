"""The forget ledger: an append-only, keyed, hash-chained record of forget requests and receipts.

Ids are never stored in clear: each is recorded as ``HMAC-SHA256(id key, kind:id)``, with a key kept
outside the ledger (:mod:`lethe.store.keys`), so the ledger proves *that* a given id was forgotten
(anyone holding the id and the key can check) without listing *what* was forgotten, and nobody
without the key can test guesses against it. Each entry's hash is an HMAC over the previous entry's
hash and its own content, so the chain cannot be rewritten without the key; the first entry records
the ledger's configuration (format, key fingerprint, hash), and a head file outside the workspace pins
the chain's end, so removing trailing entries is detected too. Entries cannot be updated or deleted
through SQLite (triggers refuse it).

A request's state is the kind of its latest entry: ``pending`` (running or interrupted), ``receipt``
(finished; the receipt says which level), ``failed`` (stopped with a reason; nothing to resume).
``readmit`` entries lift tombstones: the ids they name may be ingested again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lethe.errors import LedgerError
from lethe.store.keys import LedgerKey, key_beside, read_head, write_head
from lethe.store.sqlite import checkpoint, connect, transaction

if TYPE_CHECKING:
    from lethe.store.trace import TraceKeys

GENESIS = "0" * 64
FORMAT = 2
HASH = "hmac-sha256"
STATES = ("pending", "receipt", "failed")

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
_COLUMNS = "seq, request_id, kind, payload, created_at, prev_hash, entry_hash"


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


def entry_hash(chain_key: bytes, prev_hash: str, request_id: str, kind: str, payload: str,
               created_at: float) -> str:
    """The keyed, chained hash of one entry."""
    body = json.dumps([prev_hash, request_id, kind, payload, repr(created_at)])
    return hmac.new(chain_key, body.encode(), hashlib.sha256).hexdigest()


class Ledger:
    """Append-only keyed hash chain plus a (mutable) step journal for resumable forgetting.

    ``key`` is the :class:`~lethe.store.keys.LedgerKey` (default: a key file beside ``path``);
    ``config`` is recorded in the first entry with the key's fingerprint (everything that affects
    verification), and checked on every open.
    """

    def __init__(self, path: str | Path, key: LedgerKey | None = None, config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.key = key or key_beside(self.path)
        self.conn = connect(self.path)
        self.conn.executescript(_SCHEMA)
        self._ids_key = self.key.derive("ids")
        self._chain_key = self.key.derive("chain")
        self._check_meta()
        self.config = self._genesis(config or {})

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def _check_meta(self) -> None:
        rows = self.conn.execute("SELECT key FROM meta").fetchall()
        if rows:
            raise LedgerError(f"{self.path}: meta row {rows[0][0]!r} is not part of a format-{FORMAT} ledger (a "
                              "salt stored inside the ledger lets anyone list what was forgotten; tampered or "
                              "an old ledger: start a new workspace)")

    def _genesis(self, config: dict[str, Any]) -> dict[str, Any]:
        """Write the configuration entry of a new ledger, or check an existing one's against the key."""
        wanted = {"format": FORMAT, "hash": HASH, "key_fingerprint": self.key.fingerprint,
                  "head_file": str(self.key.head_path) if self.key.head_path else None, **config}
        created = None
        with transaction(self.conn) as c:
            if c.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0:
                created = self._insert(c, "ledger", "config", wanted)
        if created is not None and self.key.head_path is not None:
            write_head(self.key.head_path, created.seq, created.entry_hash)
        first = self.entries_from(1, 1)
        if not first or first[0].kind != "config":
            raise LedgerError(f"{self.path}: entry 1 is not the ledger's configuration (tampered)")
        found = first[0].payload
        for name, value in wanted.items():
            if name != "key_fingerprint" and found.get(name) != value:
                raise LedgerError(f"{self.path}: ledger configuration {name!r} was {found.get(name)!r} when the "
                                  f"chain was created and is {value!r} now; verification would not be comparable")
        if found.get("key_fingerprint") != self.key.fingerprint:
            raise LedgerError(
                f"{self.path}: the ledger key does not match: the chain was sealed with key fingerprint "
                f"{found.get('key_fingerprint')}, the key from {self.key.source} has {self.key.fingerprint}")
        return found

    # -- hashing -------------------------------------------------------------------------------
    def hash_id(self, value: str, kind: str = "doc") -> str:
        """Keyed hash of one id (``kind`` separates doc, owner, query and content spaces)."""
        return hmac.new(self._ids_key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    def hash_ids(self, values: Iterable[str], kind: str = "doc") -> list[str]:
        """Keyed hashes, sorted (order carries no information)."""
        return sorted(self.hash_id(v, kind) for v in values)

    def hash_labels(self, labels: Iterable[tuple[str, str]]) -> list[str]:
        """Keyed hashes of relevance judgements (query id, doc id), sorted."""
        return self.hash_ids((f"{q}\t{d}" for q, d in labels), "label")

    def trace_keys(self) -> TraceKeys:
        """The keyed hashes the trace scan uses: ids as :meth:`hash_id`, text windows with a key derived
        for ``text-window``."""
        from lethe.store.trace import TraceKeys  # numpy, only when tracing

        return TraceKeys(self._ids_key, self.key.derive("text-window"))

    def text_windows(self, texts: Iterable[str]) -> str:
        """The keyed digests of every 32-byte window of ``texts``, packed for a receipt's ``text_windows``."""
        from lethe.store.trace import encode_windows

        return encode_windows(self.trace_keys().text_windows(texts))

    def request_id(self, doc_ids: Iterable[str], owners: Iterable[str],
                   labels: Iterable[tuple[str, str]] = ()) -> str:
        """A stable id for a request: the same ids, owners and labels give the same id."""
        parts = self.hash_ids(doc_ids, "doc") + self.hash_ids(owners, "owner") + self.hash_labels(labels)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    # -- entries -------------------------------------------------------------------------------
    def _insert(self, c: sqlite3.Connection, request_id: str, kind: str, payload: dict[str, Any]) -> Entry:
        body = json.dumps(payload, sort_keys=True, default=str)
        row = c.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        prev = row[1] if row else GENESIS
        now = time.time()
        h = entry_hash(self._chain_key, prev, request_id, kind, body, now)
        cur = c.execute("INSERT INTO entries(request_id, kind, payload, created_at, prev_hash, entry_hash) "
                        "VALUES (?,?,?,?,?,?)", (request_id, kind, body, now, prev, h))
        return Entry(int(cur.lastrowid or 0), request_id, kind, json.loads(body), now, prev, h)

    def append(self, request_id: str, kind: str, payload: dict[str, Any]) -> Entry:
        """Append one entry to the chain (in a transaction), then pin the new head."""
        if kind == "config":
            raise LedgerError("only a new ledger writes a config entry")
        with transaction(self.conn) as c:
            self._check_head_before_append(c)
            entry = self._insert(c, request_id, kind, payload)
        if self.key.head_path is not None:
            write_head(self.key.head_path, entry.seq, entry.entry_hash)
        return entry

    def _pinned_head(self, missing: str) -> tuple[str, int, str] | None:
        """``(head file, seq, hash)`` the head file records; None when this ledger keeps no head file.
        A missing head file is an error whose message ends with ``missing``."""
        path = self.config.get("head_file")
        if not path:
            return None
        recorded = read_head(Path(path))
        if recorded is None:
            raise LedgerError(f"head file {path} is missing; {missing}")
        return path, recorded[0], recorded[1]

    def _check_head_before_append(self, c: sqlite3.Connection) -> None:
        """Refuse to extend a chain whose head file is gone or disagrees (a new head would hide it)."""
        pinned = self._pinned_head("refusing to extend the ledger (that would hide the loss). Restore it from a "
                                   "copy; `lethe verify --head` checks a head kept elsewhere")
        if pinned is None:
            return
        path, seq, head = pinned
        row = c.execute("SELECT entry_hash FROM entries WHERE seq = ?", (seq,)).fetchone()
        if row is None or row[0] != head:
            raise LedgerError(f"the ledger does not match its head file {path} (entries removed or the chain "
                              "rewritten); refusing to extend it. Run `lethe verify`")

    def head(self) -> str:
        """The hash of the last entry (the chain head)."""
        row = self.conn.execute("SELECT entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return row[0] if row else GENESIS

    def entries(self, request_id: str | None = None) -> list[Entry]:
        """Every request entry (of one request, if given), in order; the config entry is left out."""
        sql = f"SELECT {_COLUMNS} FROM entries WHERE kind != 'config'"
        args: tuple[str, ...] = ()
        if request_id is not None:
            sql, args = sql + " AND request_id=?", (request_id,)
        rows = self.conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [_entry(r) for r in rows]

    def entries_from(self, first: int, last: int | None = None) -> list[Entry]:
        """Entries with ``first <= seq <= last``, config included."""
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE seq >= ? AND seq <= ? ORDER BY seq",
                                 (first, last if last is not None else 2**62)).fetchall()
        return [_entry(r) for r in rows]

    def receipt(self, request_id: str) -> Entry | None:
        """The latest receipt of a request, if any."""
        found = [e for e in self.entries(request_id) if e.kind == "receipt"]
        return found[-1] if found else None

    def state(self, request_id: str) -> Entry | None:
        """The latest ``pending`` / ``receipt`` / ``failed`` entry of a request (None: unknown)."""
        found = [e for e in self.entries(request_id) if e.kind in STATES]
        return found[-1] if found else None

    # -- verification ---------------------------------------------------------------------------
    def verify_chain(self, head: str | None = None) -> int:
        """Recompute every keyed link; check the head file (and ``head``, a hash kept elsewhere).

        Returns the number of request entries, or raises :class:`LedgerError` naming the entry and
        the check that failed.
        """
        self._check_meta()
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq").fetchall()
        prev, hashes = GENESIS, []
        for i, (seq, rid, kind, payload, created, prev_hash, stored) in enumerate(rows, start=1):
            if seq != i:
                raise LedgerError(f"ledger entry {i} is missing (the sequence jumps to {seq}): entries were removed")
            if prev_hash != prev:
                raise LedgerError(f"ledger entry {seq}: prev_hash does not link to entry {seq - 1} (chain broken)")
            if entry_hash(self._chain_key, prev, rid, kind, payload, created) != stored:
                raise LedgerError(f"ledger entry {seq} ({kind}): request_id, kind, payload or created_at do not "
                                  "match its keyed hash (tampered, or hashed with another key)")
            prev = stored
            hashes.append(stored)
        self._check_config(rows)
        self._check_head_file(hashes)
        if head is not None and head not in hashes:
            raise LedgerError(f"chain head {head} is not in the ledger: trailing entries were removed or the chain "
                              "was rewritten")
        return max(len(rows) - 1, 0)

    def _check_config(self, rows: list[tuple]) -> None:
        if not rows or rows[0][2] != "config":
            raise LedgerError("ledger entry 1 is not the ledger's configuration (tampered)")
        payload = json.loads(rows[0][3])
        if payload != self.config or payload.get("key_fingerprint") != self.key.fingerprint:
            raise LedgerError("ledger entry 1 (config): does not match the configuration checked when it was opened")
        if any(r[2] == "config" for r in rows[1:]):
            raise LedgerError("a second config entry was appended to the ledger (tampered)")

    def _check_head_file(self, hashes: list[str]) -> None:
        pinned = self._pinned_head("it pins the end of the chain (restore it from a copy, or pass the last "
                                   "receipt's chain head to `lethe verify --head`)")
        if pinned is None:
            return
        path, seq, head = pinned
        if seq > len(hashes):
            raise LedgerError(f"the head file {path} records {seq} entries but the ledger holds {len(hashes)}: "
                              "trailing entries were removed")
        if hashes[seq - 1] != head:
            raise LedgerError(f"ledger entry {seq} does not match the head file {path}: the chain was rewritten")

    # -- tombstones ------------------------------------------------------------------------------
    def forgotten_hashes(self, kind: str = "doc") -> set[str]:
        """Keyed hashes of every id (or content, ``kind='content'``) forgotten by a finished request
        and not re-admitted since: the tombstones."""
        out: set[str] = set()
        for e in self.entries():
            if e.kind == "receipt":
                out.update(e.payload.get(f"{kind}_hashes", []))
            elif e.kind == "readmit":
                out.difference_update(e.payload.get(f"{kind}_hashes", []))
        return out

    def forgotten_windows(self) -> set[bytes]:
        """The text-window digests of every receipt (re-admitted texts are not subtracted: the trace
        scan drops the windows it finds in what the store holds now)."""
        from lethe.store.trace import decode_windows

        out: set[bytes] = set()
        for e in self.entries():
            if e.kind == "receipt":
                out |= decode_windows(e.payload.get("text_windows", ""))
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
        """Erase a request's journal rows (they held its raw ids while it ran)."""
        with transaction(self.conn) as c:
            c.execute("DELETE FROM journal WHERE request_id=?", (request_id,))
        checkpoint(self.conn)

    def clear_stale_journals(self) -> list[str]:
        """Erase the journal rows of finished requests (a crash between a request's receipt and the
        clearing of its journal would leave its raw ids behind). Pending and failed requests keep theirs."""
        keep = set(self.pending_requests()) | set(self.failed_requests())
        stale = [r[0] for r in self.conn.execute("SELECT DISTINCT request_id FROM journal")
                 if r[0] not in keep]
        for rid in stale:
            self.clear_journal(rid)
        return stale

    def pending_requests(self) -> list[str]:
        """Requests whose latest state is ``pending`` (running, or interrupted by a crash)."""
        return self._in_state("pending")

    def receipt_requests(self) -> list[str]:
        """Requests whose latest state is ``receipt`` (finished, at whatever level)."""
        return self._in_state("receipt")

    def failed_requests(self) -> list[str]:
        """Requests whose latest state is ``failed``."""
        return self._in_state("failed")

    def _in_state(self, kind: str) -> list[str]:
        latest: dict[str, str] = {}
        for e in self.entries():
            if e.kind in STATES:
                latest.pop(e.request_id, None)
                latest[e.request_id] = e.kind
        return [rid for rid, k in latest.items() if k == kind]


def _entry(row: tuple) -> Entry:
    seq, rid, kind, payload, created, prev_hash, stored = row
    return Entry(seq, rid, kind, json.loads(payload), created, prev_hash, stored)


__all__ = ["Entry", "Ledger", "GENESIS", "entry_hash", "sqlite3"]
