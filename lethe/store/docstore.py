"""SQLite document store: documents with owners and content hashes, deleted for real.

The database runs in WAL mode with ``PRAGMA secure_delete=ON`` (:mod:`lethe.store.sqlite`): SQLite
overwrites the content of deleted rows with zeros, and every delete ends with a
``wal_checkpoint(TRUNCATE)`` so that no old page image of a deleted document survives in the
write-ahead log either.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from lethe.errors import StoreError
from lethe.store.sqlite import SQLiteFile, checkpoint, transaction
from lethe.types import Doc, Query

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    hash TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS doc_owners (
    doc_id TEXT NOT NULL REFERENCES docs(id) ON DELETE CASCADE,
    owner_id TEXT NOT NULL,
    PRIMARY KEY (doc_id, owner_id)
);
CREATE INDEX IF NOT EXISTS doc_owners_owner ON doc_owners(owner_id);
CREATE TABLE IF NOT EXISTS queries (
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS query_owners (
    query_id TEXT NOT NULL REFERENCES queries(id) ON DELETE CASCADE,
    owner_id TEXT NOT NULL,
    PRIMARY KEY (query_id, owner_id)
);
CREATE INDEX IF NOT EXISTS query_owners_owner ON query_owners(owner_id);
"""


def content_hash(doc: Doc) -> str:
    """sha256 of what the indexes see (title + text): the key of every derived cache."""
    return hashlib.sha256(doc.contents.encode("utf-8")).hexdigest()


class DocStore(SQLiteFile):
    """Documents (and optionally queries) with owners, in one SQLite file."""

    SCHEMA = _SCHEMA

    # -- writing -------------------------------------------------------------------------------
    def ingest(self, docs: Iterable[Doc], queries: Iterable[Query] = (), upsert: bool = False) -> int:
        """Insert documents (and queries) in ONE transaction; returns how many docs were written.

        An id already in the store is an error unless ``upsert``; on any error nothing is written.
        """
        docs = list(docs)
        seen: set[str] = set()
        repeated = [d.id for d in docs if d.id in seen or seen.add(d.id)]
        if repeated:
            raise StoreError(f"document id(s) repeated within one ingest batch, e.g. {repeated[:5]}")
        with transaction(self.conn) as c:
            if not upsert:
                self._refuse_existing(c, [d.id for d in docs])
            c.executemany(
                "INSERT INTO docs(id, title, text, hash, metadata) VALUES (?,?,?,?,?) ON CONFLICT(id) DO UPDATE "
                "SET title=excluded.title, text=excluded.text, hash=excluded.hash, metadata=excluded.metadata",
                [(d.id, d.title, d.text, content_hash(d), _dump(d.metadata)) for d in docs],
            )
            c.executemany("DELETE FROM doc_owners WHERE doc_id=?", [(d.id,) for d in docs])
            c.executemany(
                "INSERT INTO doc_owners(doc_id, owner_id) VALUES (?,?)",
                [(d.id, o) for d in docs for o in dict.fromkeys(d.owners)],
            )
            self._ingest_queries(c, list(queries))
        return len(docs)

    def _refuse_existing(self, c: sqlite3.Connection, ids: list[str]) -> None:
        existing = self._existing(c, ids)
        if existing:
            raise StoreError(
                f"{len(existing)} document id(s) already in the store, e.g. {existing[:5]}; "
                "pass upsert=True to replace them"
            )

    @staticmethod
    def _existing(c: sqlite3.Connection, ids: list[str]) -> list[str]:
        out: list[str] = []
        for chunk in _chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            out += [r[0] for r in c.execute(f"SELECT id FROM docs WHERE id IN ({marks})", chunk)]
        return out

    @staticmethod
    def _ingest_queries(c: sqlite3.Connection, queries: list[Query]) -> None:
        c.executemany(
            "INSERT OR REPLACE INTO queries(id, text, metadata) VALUES (?,?,?)",
            [(q.id, q.text, _dump(q.metadata)) for q in queries],
        )
        c.executemany(
            "INSERT OR IGNORE INTO query_owners(query_id, owner_id) VALUES (?,?)",
            [(q.id, o) for q in queries for o in q.owners],
        )

    def delete(self, doc_ids: Collection[str]) -> int:
        """Delete documents for real (zeroed pages, truncated WAL); returns how many were present."""
        ids = list(dict.fromkeys(doc_ids))
        with transaction(self.conn) as c:
            present = self._existing(c, ids)
            c.executemany("DELETE FROM docs WHERE id=?", [(i,) for i in present])
        checkpoint(self.conn)
        return len(present)

    def delete_queries(self, query_ids: Collection[str]) -> int:
        """Delete queries (e.g. an owner's own questions); returns how many were present."""
        with transaction(self.conn) as c:
            n = sum(c.execute("DELETE FROM queries WHERE id=?", (i,)).rowcount for i in query_ids)
        checkpoint(self.conn)
        return n

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def __contains__(self, doc_id: object) -> bool:
        row = self.conn.execute("SELECT 1 FROM docs WHERE id=?", (str(doc_id),)).fetchone()
        return row is not None

    def ids(self) -> list[str]:
        """Every document id, in insertion order."""
        return [r[0] for r in self.conn.execute("SELECT id FROM docs ORDER BY rowid")]

    def get(self, doc_id: str) -> Doc | None:
        """One document, or None."""
        docs = self.get_many([doc_id])
        return docs[0] if docs else None

    def get_many(self, doc_ids: Iterable[str]) -> list[Doc]:
        """The documents among ``doc_ids`` that exist, in the order asked."""
        ids = list(doc_ids)
        found: dict[str, Doc] = {}
        for chunk in _chunks(ids, 900):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, title, text, metadata FROM docs WHERE id IN ({marks})"
            rows = self.conn.execute(sql, chunk).fetchall()
            owners = self._owners_of([r[0] for r in rows])
            for did, title, text, meta in rows:
                found[did] = Doc(did, text, title, tuple(owners.get(did, ())), json.loads(meta))
        return [found[i] for i in ids if i in found]

    def _owners_of(self, ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        marks = ",".join("?" * len(ids))
        sql = f"SELECT doc_id, owner_id FROM doc_owners WHERE doc_id IN ({marks}) ORDER BY rowid"
        for did, owner in self.conn.execute(sql, ids):
            out.setdefault(did, []).append(owner)
        return out

    def iter_docs(self, batch_size: int = 1000) -> Iterator[Doc]:
        """Every document, in insertion order."""
        ids = self.ids()
        for chunk in _chunks(ids, batch_size):
            yield from self.get_many(chunk)

    def hashes(self, doc_ids: Iterable[str] | None = None) -> dict[str, str]:
        """doc id -> content hash (all documents when ``doc_ids`` is None)."""
        if doc_ids is None:
            return dict(self.conn.execute("SELECT id, hash FROM docs ORDER BY rowid").fetchall())
        out: dict[str, str] = {}
        for chunk in _chunks(list(doc_ids), 900):
            marks = ",".join("?" * len(chunk))
            out.update(self.conn.execute(f"SELECT id, hash FROM docs WHERE id IN ({marks})", chunk))
        return out

    def query_texts(self, query_ids: Iterable[str]) -> dict[str, str]:
        """``{query id: text}`` for the stored queries among ``query_ids``."""
        out: dict[str, str] = {}
        for chunk in _chunks(list(dict.fromkeys(query_ids)), 500):
            marks = ",".join("?" * len(chunk))
            out.update(self.conn.execute(f"SELECT id, text FROM queries WHERE id IN ({marks})", chunk).fetchall())
        return out

    def docs_of_owner(self, owner_id: str) -> list[str]:
        """Ids of the documents ``owner_id`` owns (one of possibly several owners)."""
        sql = "SELECT doc_id FROM doc_owners WHERE owner_id=? ORDER BY doc_id"
        return [r[0] for r in self.conn.execute(sql, (owner_id,))]

    def queries_of_owner(self, owner_id: str) -> list[str]:
        """Ids of the queries ``owner_id`` asked."""
        sql = "SELECT query_id FROM query_owners WHERE owner_id=? ORDER BY query_id"
        return [r[0] for r in self.conn.execute(sql, (owner_id,))]

    def rewrite_metadata(self, needles: Iterable[str], change: Callable[[Any], Any]) -> int:
        """Rewrite, in one transaction, the metadata of every document and query whose metadata JSON holds
        one of ``needles`` as a string (a value or a key); returns how many rows changed. The forget
        pipeline's ``scrub`` step uses it: a collection's metadata may name other documents (SciFact's
        claims name their evidence documents), and a forgotten id must not stay there."""
        changed = 0
        with transaction(self.conn):
            for table in ("docs", "queries"):
                rows: dict[int, str] = {}
                for needle in needles:
                    sql = f"SELECT rowid, metadata FROM {table} WHERE instr(metadata, ?) > 0"
                    rows.update(self.conn.execute(sql, (json.dumps(needle, ensure_ascii=False),)).fetchall())
                for rowid, meta in rows.items():
                    new = _dump(change(json.loads(meta)))
                    if new != meta:
                        self.conn.execute(f"UPDATE {table} SET metadata=? WHERE rowid=?", (new, rowid))
                        changed += 1
        return changed

    def query_owners(self, query_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """``{query id: owners}`` for the stored queries among ``query_ids`` that have owners."""
        out: dict[str, list[str]] = {}
        for chunk in _chunks(list(dict.fromkeys(query_ids)), 500):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT query_id, owner_id FROM query_owners WHERE query_id IN ({marks}) ORDER BY rowid"
            for qid, owner in self.conn.execute(sql, chunk):
                out.setdefault(qid, []).append(owner)
        return {q: tuple(o) for q, o in out.items()}

    def query_ids(self) -> list[str]:
        """Every stored query id."""
        return [r[0] for r in self.conn.execute("SELECT id FROM queries ORDER BY rowid")]

    def owners(self) -> list[str]:
        """Every owner id of a stored document or query."""
        sql = "SELECT owner_id FROM doc_owners UNION SELECT owner_id FROM query_owners ORDER BY owner_id"
        return [r[0] for r in self.conn.execute(sql)]

    def owner_counts(self) -> list[tuple[str, int]]:
        """(owner, number of documents) sorted by count descending, then owner id."""
        sql = ("SELECT owner_id, COUNT(*) AS n FROM doc_owners GROUP BY owner_id "
               "ORDER BY n DESC, owner_id")
        return [(o, int(n)) for o, n in self.conn.execute(sql)]

    def fingerprint(self) -> str:
        """sha256 over (id, content hash) of every document, sorted by id."""
        h = hashlib.sha256()
        for did, dh in self.conn.execute("SELECT id, hash FROM docs ORDER BY id"):
            h.update(f"{did}\t{dh}\n".encode())
        return h.hexdigest()


def _dump(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
