"""The registry's SQLite database: schema, connection and transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from lethe.store.sqlite import connect as sqlite_connect
from lethe.store.sqlite import transaction

__all__ = ["AFFECTED_SQL", "LINEAGE_TABLES", "SCHEMA_VERSION", "connect", "fill_temp_ids", "transaction"]

SCHEMA_VERSION = 1

#: the lineage tables, by the Lineage field they store: (table, id column)
LINEAGE_TABLES: dict[str, tuple[str, str]] = {
    "doc_ids": ("lineage_docs", "doc_id"),
    "owner_ids": ("lineage_owners", "owner_id"),
    "query_ids": ("lineage_queries", "query_id"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_at TEXT NOT NULL,
    manifest TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS lineage_docs (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    doc_id TEXT NOT NULL,
    PRIMARY KEY (artifact_id, doc_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_docs_doc_id ON lineage_docs(doc_id);
CREATE TABLE IF NOT EXISTS lineage_owners (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    owner_id TEXT NOT NULL,
    PRIMARY KEY (artifact_id, owner_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_owners_owner_id ON lineage_owners(owner_id);
CREATE TABLE IF NOT EXISTS lineage_queries (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    query_id TEXT NOT NULL,
    PRIMARY KEY (artifact_id, query_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_queries_query_id ON lineage_queries(query_id);
CREATE TABLE IF NOT EXISTS lineage_parents (
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    parent_id INTEGER NOT NULL REFERENCES artifacts(id),
    relation TEXT NOT NULL,
    PRIMARY KEY (artifact_id, parent_id, relation),
    CHECK (parent_id < artifact_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lineage_parents_parent_id ON lineage_parents(parent_id);
"""

#: artifacts reached from the seed ids (temp tables q_doc_ids, q_owner_ids, q_query_ids),
#: then down the parent edges; the longest depth orders parents before children
AFFECTED_SQL = """
WITH RECURSIVE
seed(id) AS (
    SELECT l.artifact_id FROM temp.q_doc_ids AS q CROSS JOIN lineage_docs AS l
        ON l.doc_id = q.id
    UNION
    SELECT l.artifact_id FROM temp.q_owner_ids AS q CROSS JOIN lineage_owners AS l
        ON l.owner_id = q.id
    UNION
    SELECT l.artifact_id FROM temp.q_query_ids AS q CROSS JOIN lineage_queries AS l
        ON l.query_id = q.id
),
reach(id, depth) AS (
    SELECT id, 0 FROM seed
    UNION
    SELECT p.artifact_id, r.depth + 1 FROM reach AS r CROSS JOIN lineage_parents AS p
        ON p.parent_id = r.id
    WHERE r.depth < 10000
)
SELECT a.id, a.name, a.version, a.kind, a.source, a.status, a.manifest, MAX(r.depth) AS depth
FROM reach AS r JOIN artifacts AS a ON a.id = r.id
WHERE a.status = 'active'
GROUP BY a.id
ORDER BY depth, a.id
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open (and create) the registry database: WAL, secure delete (deleted lineage rows are zeroed,
    not left in free pages), foreign keys (:mod:`lethe.store.sqlite`); transactions are explicit."""
    conn = sqlite_connect(path, timeout=30.0)
    conn.row_factory = sqlite3.Row
    _create_schema(conn)
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    with transaction(conn):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def fill_temp_ids(conn: sqlite3.Connection, table: str, ids: Iterable[str]) -> None:
    """(Re)create ``temp.<table>(id TEXT PRIMARY KEY)`` holding ``ids``."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute(f"DELETE FROM temp.{table}")
    conn.executemany(f"INSERT OR IGNORE INTO temp.{table}(id) VALUES (?)", ((i,) for i in ids))
