"""No trace in the workspace: the last step of a forget request, and the scan ``lethe verify`` runs.

After the store, the indexes, the cache and the models, forgotten ids are still written in what
stays: the lineage and payload of the models a request does not replace (forgotten without
``--unlearn``, or ones that could not be unlearned: the receipt lists them as still trained on the
data), and the manifests. The ``scrub`` step makes them keyed hashes (``h:<hash>``, see
:mod:`lethe.store.redact`) and checkpoints every database, so no write-ahead log keeps an old page.

:func:`trace_report` scans every byte under the workspace home for the forgotten ids and texts of
every receipt (:mod:`lethe.store.trace`), holding only their keyed hashes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from lethe.pipelines.workspace import Workspace
from lethe.store.redact import HASHED, redact, redact_tree
from lethe.store.sqlite import checkpoint, free_pages
from lethe.store.trace import KINDS, TraceHit, TraceKeys, scan_workspace

#: at most this many hits are listed one by one in a trace report
SHOWN_HITS = 50


def hashed_forms(ws: Workspace, ids: Iterable[str], kind: str) -> list[str]:
    """``h:<keyed hash>`` of each id: how lineage and records name a forgotten one."""
    return [HASHED + ws.ledger.hash_id(i, kind) for i in ids]


def id_mapping(ws: Workspace, doc_ids: Iterable[str], owners: Iterable[str],
               query_ids: Iterable[str]) -> dict[str, str]:
    """Forgotten id -> its hashed form (a string that is a doc id and an owner takes the doc's)."""
    mapping: dict[str, str] = {}
    for ids, kind in ((owners, "owner"), (query_ids, "query"), (doc_ids, "doc")):
        ids = list(ids)
        mapping.update(zip(ids, hashed_forms(ws, ids, kind), strict=True))
    return mapping


def scrub_request(ws: Workspace, doc_ids: list[str], owners: list[str], query_ids: list[str]) -> dict[str, Any]:
    """The ``scrub`` step: forgotten ids become keyed hashes in lineage, manifests and model records;
    every database is checkpointed. Idempotent."""
    rows = ws.registry.hash_lineage(doc_ids, owners, query_ids, ws.ledger.hash_id)
    mapping = id_mapping(ws, doc_ids, owners, query_ids)
    manifests = ws.registry.rewrite_manifests(lambda m: redact(m, mapping)) if mapping else 0
    files = [str(f.relative_to(ws.home)) for art in ws.registry.list(status="active") if art.path is not None
             for f in redact_tree(art.path, mapping)]
    return {"lineage_rows_hashed": rows, "manifests_rewritten": manifests, "records_rewritten": files,
            "free_pages": checkpoint_all(ws)}


def checkpoint_all(ws: Workspace) -> dict[str, int]:
    """Truncate the write-ahead log of every database of the workspace into its main file; returns the
    pages each keeps on its free list (zeroed: every connection runs with ``secure_delete``)."""
    conns = {"store": ws.store.conn, "ledger": ws.ledger.conn, "cache": ws.cache.conn, "registry": ws.registry.conn}
    for conn in conns.values():
        checkpoint(conn)
    return {name: free_pages(conn) for name, conn in conns.items()}


def trace_report(ws: Workspace) -> dict[str, Any]:
    """Scan every file under the workspace home for the ids and texts of every receipt.

    Ids the store holds again (re-admitted) are not looked for, and a text window also found in a
    document or query the store holds now is no trace of the forgotten one.
    """
    keys = ws.ledger.trace_keys()
    ids = {kind: ws.ledger.forgotten_hashes(kind) - _live_hashes(ws, kind) for kind in KINDS}
    stats: dict[str, Any] = {}
    hits = scan_workspace(ws.home, ids, ws.ledger.forgotten_windows(), keys, stats)
    hits = _without_live_text(ws, hits, keys)
    return {**stats, "found": sorted({h.path for h in hits}),
            "hits": [{"path": h.path, "what": h.what, "where": h.where, "offset": h.offset}
                     for h in hits[:SHOWN_HITS]]}


def _live_hashes(ws: Workspace, kind: str) -> set[str]:
    live = {"doc": ws.store.ids, "owner": ws.store.owners, "query": ws.store.query_ids}[kind]()
    return {ws.ledger.hash_id(i, kind) for i in live}


def _without_live_text(ws: Workspace, hits: list[TraceHit], keys: TraceKeys) -> list[TraceHit]:
    """Drop text hits whose every window is also in a text the store holds now."""
    wanted = {d for h in hits for d in h.digests}
    if not wanted:
        return hits
    shared = {d for text in _live_texts(ws) for d in wanted.intersection(keys.digests(text.encode("utf-8")))}
    return [h for h in hits if h.what != "text" or h.digests - shared]


def _live_texts(ws: Workspace) -> Iterator[str]:
    for doc in ws.store.iter_docs():
        yield from (doc.title, doc.text, doc.contents)
    yield from ws.store.query_texts(ws.store.query_ids()).values()
