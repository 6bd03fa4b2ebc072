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

import json
import re
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
    live = live_ids(ws)
    mapping: dict[str, str] = {}
    for ids, kind in ((owners, "owner"), (query_ids, "query"), (doc_ids, "doc")):
        ids = [i for i in ids if i not in live]  # the same string names a kept document, query or user
        mapping.update(zip(ids, hashed_forms(ws, ids, kind), strict=True))
    return mapping


def live_ids(ws: Workspace) -> set[str]:
    """Every id of a document, query or owner the store keeps (of any kind: on Stack Exchange user 13
    and post 13 are different things)."""
    return set(ws.store.ids()) | set(ws.store.query_ids()) | set(ws.store.owners())


def scrub_request(ws: Workspace, doc_ids: list[str], owners: list[str], query_ids: list[str]) -> dict[str, Any]:
    """The ``scrub`` step: forgotten ids become keyed hashes in lineage, manifests, model records and the
    metadata of the documents and queries that stay; every database is checkpointed. Idempotent."""
    rows = ws.registry.hash_lineage(doc_ids, owners, query_ids, ws.ledger.hash_id)
    mapping = id_mapping(ws, doc_ids, owners, query_ids)
    manifests = ws.registry.rewrite_manifests(lambda m: redact(m, mapping)) if mapping else 0
    files = [str(f.relative_to(ws.home)) for art in ws.registry.list(status="active") if art.path is not None
             for f in redact_tree(art.path, mapping)]
    metadata = ws.store.rewrite_metadata(mapping, lambda m: redact(m, mapping)) if mapping else 0
    return {"lineage_rows_hashed": rows, "manifests_rewritten": manifests, "records_rewritten": files,
            "metadata_rows_rewritten": metadata, "free_pages": checkpoint_all(ws)}


def checkpoint_all(ws: Workspace) -> dict[str, int]:
    """Truncate the write-ahead log of every database of the workspace into its main file; returns the
    pages each keeps on its free list (zeroed: every connection runs with ``secure_delete``)."""
    conns = {"store": ws.store.conn, "ledger": ws.ledger.conn, "cache": ws.cache.conn, "registry": ws.registry.conn}
    for conn in conns.values():
        checkpoint(conn)
    return {name: free_pages(conn) for name, conn in conns.items()}


def trace_report(ws: Workspace) -> dict[str, Any]:
    """Scan every file under the workspace home for the ids and texts of every receipt.

    A forgotten id is not looked for when the same string is written in what the workspace keeps:
    the id of a kept document, query or user of any kind (re-admitted, or another thing with the same
    number), or a word of a kept text or metadata (``12`` in "12 epochs"); those bytes cannot tell
    whether they came from the forgotten data, and ``ids_ambiguous`` counts them. A text window also
    found in a kept text or metadata is no trace of the forgotten one either.
    """
    keys = ws.ledger.trace_keys()
    kept = live_ids(ws) | live_words(ws)
    ids, ambiguous = {}, 0
    for kind in KINDS:
        forgotten = ws.ledger.forgotten_hashes(kind)
        kept_hashes = {ws.ledger.hash_id(i, kind) for i in kept} & forgotten
        ids[kind], ambiguous = forgotten - kept_hashes, ambiguous + len(kept_hashes)
    stats: dict[str, Any] = {}
    hits = scan_workspace(ws.home, ids, ws.ledger.forgotten_windows(), keys, stats)
    hits = _without_live_text(ws, hits, keys)
    return {**stats, "ids_ambiguous": ambiguous, "found": sorted({h.path for h in hits}),
            "hits": [{"path": h.path, "what": h.what, "where": h.where, "offset": h.offset}
                     for h in hits[:SHOWN_HITS]]}


#: id-like words of kept texts (as the scanner reads ids)
_WORD = re.compile(r"[A-Za-z0-9_\-:.@/]{1,64}")


def live_words(ws: Workspace) -> set[str]:
    """Every id-like word (and its pieces between ``:`` ``/`` ``@``) of the texts kept, metadata free text
    included (a line number in a question body), but not a metadata string that is one id-like token as a
    whole: that may name a forgotten record (a trace, which ``scrub`` removes)."""
    words: set[str] = set()
    texts = _live_texts(ws, metadata=True)
    for text in texts:
        if _WORD.fullmatch(text):  # a whole metadata string that could be an id may name a forgotten one
            continue
        for w in _WORD.findall(text):
            words.add(w)
            words.update(re.split(r"[:/@]", w))
        words.update(re.findall(r"[A-Za-z0-9]+", text))  # as an analyzer splits "1.2434" or "v2-3"
    words.discard("")
    return words


def _without_live_text(ws: Workspace, hits: list[TraceHit], keys: TraceKeys) -> list[TraceHit]:
    """Drop text hits whose every window is also in a text the store holds now."""
    wanted = {d for h in hits for d in h.digests}
    if not wanted:
        return hits
    shared = {d for text in _live_texts(ws) for d in wanted.intersection(keys.digests(text.encode("utf-8")))}
    return [h for h in hits if h.what != "text" or h.digests - shared]


def _live_texts(ws: Workspace, metadata: bool = True) -> Iterator[str]:
    """Every text the store keeps: titles, texts, query texts, and (``metadata``) the strings of their
    metadata (a kept question's body is kept text, even where a forgotten answer quoted it)."""
    for doc in ws.store.iter_docs():
        yield from (doc.title, doc.text, doc.contents)
        if metadata:
            yield from _strings(doc.metadata)
    yield from ws.store.query_texts(ws.store.query_ids()).values()
    if metadata:
        for (meta,) in ws.store.conn.execute("SELECT metadata FROM queries"):
            yield from _strings(json.loads(meta) if meta else {})


def _strings(obj: Any) -> Iterator[str]:
    """Every string (value or key) of a JSON value."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
