"""Retrieval pipelines composed with operators, in the PyTerrier manner (docs/architecture.md).

``ws.retriever("rrf") % 20 >> ws.reranker("smollm2", mode="qlm")`` is a :class:`Pipeline`: the
retriever's top 20 re-ranked by the LLM. ``%`` cuts the candidate list at a rank, ``>>`` sends it to a
reranker (or to another pipeline's rerank stages). A pipeline prints as its own configuration and
searches like any lethe retriever:

* ``pipe.search("a query", k=5)`` gives a list of :class:`Result` (``doc_id``, ``score``, ``title``);
* ``pipe.search(["q1", "q2"], k=5)`` gives one list of :class:`~lethe.types.Hit` per query, as the
  indexes do, so a pipeline goes wherever a retriever goes (evaluation, the service).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

from lethe.errors import LetheError
from lethe.types import Hit

#: candidates handed to a reranker when no ``%`` cut-off comes before it
DEFAULT_DEPTH = 100


class Result(NamedTuple):
    """One result of a single-query search: the document id, its score, its title."""

    doc_id: str
    score: float
    title: str = ""


@dataclass(frozen=True)
class Cutoff:
    """Keep the top ``k`` of the current candidates."""

    k: int

    def __str__(self) -> str:
        return f"% {self.k}"


@dataclass(frozen=True)
class Rerank:
    """Re-order the current candidates with a reranker (``.rerank(query, hits)``)."""

    reranker: Any

    def __str__(self) -> str:
        return f">> {describe(self.reranker)}"


@dataclass(frozen=True)
class Pipeline:
    """A first-stage retriever followed by cut-offs and rerankers."""

    retriever: Any
    stages: tuple[Cutoff | Rerank, ...] = ()
    name: str = ""
    titles: Callable[[Sequence[str]], dict[str, str]] | None = field(default=None, compare=False, repr=False)

    def __mod__(self, k: int) -> Pipeline:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise LetheError(f"a rank cut-off (%) must be a positive integer, not {k!r}")
        return Pipeline(self.retriever, (*self.stages, Cutoff(k)), self.name, self.titles)

    def __rshift__(self, other: Any) -> Pipeline:
        if isinstance(other, Pipeline):  # its retriever is ignored: only its later stages apply here
            return Pipeline(self.retriever, (*self.stages, *other.stages), self.name, self.titles)
        if other is None:  # no reranker (e.g. ``ws.reranker("auto")`` where none was chosen)
            return self
        if not hasattr(other, "rerank"):
            raise LetheError(f"cannot send results to {type(other).__name__}: it has no rerank(query, hits)")
        return Pipeline(self.retriever, (*self.stages, Rerank(other)), self.name, self.titles)

    def __str__(self) -> str:
        return " ".join([self.name or describe(self.retriever), *(str(s) for s in self.stages)])

    def __repr__(self) -> str:
        return f"Pipeline({self})"

    def first_depth(self, k: int) -> int:
        """How many candidates the retriever must give: the first cut-off, or enough for the rest."""
        for stage in self.stages:
            if isinstance(stage, Cutoff):
                return stage.k
            return max(k, DEFAULT_DEPTH)  # a reranker first: it sees the default depth
        return k

    @overload
    def search(self, queries: str, k: int = 10) -> list[Result]: ...
    @overload
    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]: ...

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[Result] | list[list[Hit]]:
        """Top ``k`` for one query (results with titles) or for each of a list of queries (hits)."""
        single = isinstance(queries, str)
        qs = [queries] if single else list(queries)
        runs = [self._run(q, hits, k) for q, hits in zip(qs, self.retriever.search(qs, self.first_depth(k)))]
        if not single:
            return runs
        titles = self.titles([h.doc_id for h in runs[0]]) if self.titles else {}
        return [Result(h.doc_id, float(h.score), titles.get(h.doc_id, "")) for h in runs[0]]

    def _run(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        for stage in self.stages:
            hits = hits[: stage.k] if isinstance(stage, Cutoff) else list(stage.reranker.rerank(query, hits))
        return hits[:k]


def describe(component: Any) -> str:
    """A short name of a retriever or reranker: its kind, with its ``version`` (or ``name``) and ``mode``."""
    label = getattr(component, "version", None) or getattr(component, "name", None)
    mode = getattr(component, "mode", None)
    inner = ", ".join(x for x in (label, mode) if isinstance(x, str) and x)
    return f"{type(component).__name__}({inner})" if inner else type(component).__name__
