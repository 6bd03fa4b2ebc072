"""One reranker interface: ``rerank(query, hits, k) -> Ranked`` (a list of hits with cost figures).

Every reranker reads passage texts through a :data:`TextSource` (a mapping doc id -> text, or a
callable that fetches many ids at once, e.g. a workspace's document store), so it composes after any
retriever: ``Reranked(retriever, reranker, depth)`` (or ``reranker.after(retriever, depth)``) is
itself a retriever with ``search(queries, k)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lethe.errors import LetheError
from lethe.types import Hit

TextSource = Mapping[str, str] | Callable[[Sequence[str]], Mapping[str, str]]


@dataclass
class RerankStats:
    """Cost of one or more rerank calls: model calls, input / output tokens, wall seconds."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def __iadd__(self, other: RerankStats) -> RerankStats:
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.seconds += other.seconds
        return self

    def per_query(self, n: int) -> dict[str, float]:
        """Averages over ``n`` queries, in the benchmark's keys."""
        n = max(1, n)
        return {"calls_per_query": round(self.calls / n, 2),
                "input_tokens_per_query": round(self.input_tokens / n, 1),
                "output_tokens_per_query": round(self.output_tokens / n, 1),
                "seconds_per_query": round(self.seconds / n, 3)}


class Ranked(list):
    """A list of :class:`Hit` (best first) that also carries the :class:`RerankStats` of its making."""

    def __init__(self, hits: Sequence[Hit] = (), stats: RerankStats | None = None) -> None:
        super().__init__(hits)
        self.stats = stats or RerankStats()


@runtime_checkable
class Reranker(Protocol):
    """Re-orders a candidate list for a query."""

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> Ranked:
        """The hits re-ordered (best first), cut to ``k`` when given, with their cost."""
        ...


def fetch_texts(source: TextSource | None, doc_ids: Sequence[str]) -> dict[str, str]:
    """Texts of ``doc_ids`` from ``source``; raises naming the first id that has no text."""
    if source is None:
        raise LetheError("this reranker has no text source: pass texts= (a mapping or a fetch function)")
    got = source(list(doc_ids)) if callable(source) else {d: source[d] for d in doc_ids if d in source}
    missing = [d for d in doc_ids if d not in got]
    if missing:
        raise LetheError(f"no text for {len(missing)} candidate(s), e.g. doc id {missing[0]!r}")
    return {d: got[d] for d in doc_ids}


def order_to_ranked(hits: Sequence[Hit], order: Sequence[int], k: int | None, stats: RerankStats,
                    scores: Sequence[float] | None = None) -> Ranked:
    """Hits in ``order`` (indexes into ``hits``); scores are the given ones or descending ranks."""
    n = len(order)
    out = [Hit(hits[i].doc_id, float(scores[i]) if scores is not None else float(n - r))
           for r, i in enumerate(order)]
    return Ranked(out[:k] if k else out, stats)


@dataclass
class TextReranker:
    """Shared plumbing: a text source, timing, ``after(retriever)``."""

    texts: TextSource | None = field(default=None, kw_only=True)

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> Ranked:
        """Re-order ``hits`` for ``query`` (see :class:`Reranker`)."""
        hits = list(hits)
        if not hits:
            return Ranked()
        texts = fetch_texts(self.texts, [h.doc_id for h in hits])
        t0 = time.perf_counter()
        ranked = self._rerank(query, hits, [texts[h.doc_id] for h in hits], k)
        ranked.stats.seconds = time.perf_counter() - t0
        return ranked

    def _rerank(self, query: str, hits: list[Hit], passages: list[str], k: int | None) -> Ranked:
        raise NotImplementedError

    def after(self, retriever: Any, depth: int = 100) -> Reranked:
        """This reranker applied to ``retriever``'s top ``depth``."""
        return Reranked(retriever, self, depth)


@dataclass
class Reranked:
    """A retriever followed by a reranker: ``search`` returns the reranked top ``k``.

    ``stats`` accumulates the reranker's cost over every query searched so far.
    """

    retriever: Any
    reranker: Reranker
    depth: int = 100
    stats: RerankStats = field(default_factory=RerankStats)

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top ``k`` after reranking the retriever's top ``depth`` for each query."""
        qs = [queries] if isinstance(queries, str) else list(queries)
        firsts = self.retriever.search(qs, self.depth)
        out = []
        for q, hits in zip(qs, firsts):
            ranked = self.reranker.rerank(q, hits, k)
            self.stats += ranked.stats
            out.append(list(ranked))
        return out


def rerank_run(reranker: Reranker, run: Mapping[str, Mapping[str, float]], queries: Mapping[str, str],
               depth: int = 100, on_query: Callable[[], None] | None = None) -> tuple[dict[str, dict[str, float]],
                                                                                       RerankStats]:
    """Rerank every query's top ``depth`` of a TREC-style run; returns the new run and its total cost."""
    total = RerankStats()
    out: dict[str, dict[str, float]] = {}
    for qid, docs in run.items():
        if qid not in queries:
            raise LetheError(f"run has query {qid!r} that is not among the queries")
        hits = sorted((Hit(d, float(s)) for d, s in docs.items()), key=lambda h: -h.score)[:depth]
        ranked = reranker.rerank(queries[qid], hits)
        total += ranked.stats
        out[qid] = {h.doc_id: float(len(ranked) - r) for r, h in enumerate(ranked)}
        if on_query:
            on_query()
    return out, total
