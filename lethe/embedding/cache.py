"""Embedding cache keyed by (encoder version, document content hash), in SQLite.

Unchanged documents are never re-encoded. Deleting a document purges its vectors under every
encoder version (secure delete + WAL truncation, as in the document store).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lethe.store.sqlite import SQLiteFile, checkpoint, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model TEXT NOT NULL,
    hash TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vec BLOB NOT NULL,
    PRIMARY KEY (model, hash)
);
CREATE INDEX IF NOT EXISTS vectors_hash ON vectors(hash);
"""


class EmbeddingCache(SQLiteFile):
    """Vectors by (model version, content hash)."""

    SCHEMA = _SCHEMA

    def get_many(self, model: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached vectors of ``hashes`` under ``model`` (missing ones are absent)."""
        hashes = list(dict.fromkeys(hashes))
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(hashes), 900):
            chunk = hashes[i : i + 900]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT hash, vec FROM vectors WHERE model=? AND hash IN ({marks})"
            for h, blob in self.conn.execute(sql, [model, *chunk]):
                out[h] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put_many(self, model: str, hashes: Iterable[str], vectors: np.ndarray) -> None:
        """Store vectors (one transaction)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = [(model, h, int(v.shape[0]), v.tobytes()) for h, v in zip(hashes, vectors, strict=True)]
        with transaction(self.conn) as c:
            c.executemany("INSERT OR REPLACE INTO vectors(model, hash, dim, vec) VALUES (?,?,?,?)", rows)

    def purge(self, hashes: Iterable[str]) -> int:
        """Delete the vectors of these content hashes under every model; returns rows removed."""
        hashes = list(dict.fromkeys(hashes))
        with transaction(self.conn) as c:
            n = sum(c.execute("DELETE FROM vectors WHERE hash=?", (h,)).rowcount for h in hashes)
        checkpoint(self.conn)
        return n

    def purge_model(self, model: str) -> int:
        """Delete every vector of one encoder version (e.g. a retired model)."""
        with transaction(self.conn) as c:
            n = c.execute("DELETE FROM vectors WHERE model=?", (model,)).rowcount
        checkpoint(self.conn)
        return n

    def contains_hash(self, h: str) -> bool:
        """Whether any model has a vector for this content hash."""
        return self.conn.execute("SELECT 1 FROM vectors WHERE hash=? LIMIT 1", (h,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
