"""Hybrid fusion: reciprocal-rank fusion and convex combination of normalised scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lethe.types import Hit

NORMS = ("minmax", "zscore", "none")
METHODS = ("rrf", "convex")


def rrf(rankings: Sequence[Sequence[Hit]], k: int = 60, weights: Sequence[float] | None = None,
        depth: int | None = None) -> list[Hit]:
    """Reciprocal-rank fusion: ``sum_i w_i / (k + rank_i(d))`` (rank from 1), best first."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    scores: dict[str, float] = {}
    for w, hits in zip(weights, rankings, strict=True):
        for rank, hit in enumerate(hits, start=1):
            scores[hit.doc_id] = scores.get(hit.doc_id, 0.0) + w / (k + rank)
    return _ranked(scores, depth)


def normalize(hits: Sequence[Hit], method: str = "minmax") -> dict[str, float]:
    """Scores of one list rescaled: ``minmax`` to [0, 1], ``zscore``, or ``none``."""
    if method not in NORMS:
        raise ValueError(f"unknown normalisation {method!r}; choose from {list(NORMS)}")
    if not hits:
        return {}
    s = np.asarray([h.score for h in hits], dtype=np.float64)
    if method == "minmax":
        span = s.max() - s.min()
        s = (s - s.min()) / span if span > 0 else np.ones_like(s)
    elif method == "zscore":
        sd = s.std()
        s = (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)
    return {h.doc_id: float(v) for h, v in zip(hits, s)}


def convex(rankings: Sequence[Sequence[Hit]], weights: Sequence[float], norm: str = "minmax",
           depth: int | None = None) -> list[Hit]:
    """Convex combination ``sum_i w_i * norm_i(score)``; a missing document scores the list's minimum."""
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    if any(w < 0 for w in weights) or not np.isclose(sum(weights), 1.0):
        raise ValueError(f"convex weights must be >= 0 and sum to 1, got {list(weights)}")
    normed = [normalize(h, norm) for h in rankings]
    floors = [min(n.values()) if n else 0.0 for n in normed]
    all_ids = dict.fromkeys(d for n in normed for d in n)
    scores = {d: sum(w * n.get(d, f) for w, n, f in zip(weights, normed, floors)) for d in all_ids}
    return _ranked(scores, depth)


def _ranked(scores: dict[str, float], depth: int | None) -> list[Hit]:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Hit(d, s) for d, s in (ranked[:depth] if depth else ranked)]


class Searcher(Protocol):
    """Anything with ``search(queries, k)``."""

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]: ...


@dataclass
class FusionRetriever:
    """Fuse several retrievers: each is searched to ``depth``, then fused (``rrf`` or ``convex``)."""

    retrievers: Sequence[Searcher]
    method: str = "rrf"
    weights: Sequence[float] | None = None
    depth: int = 100
    rrf_k: int = 60
    norm: str = "minmax"
    names: Sequence[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown fusion {self.method!r}; choose from {list(METHODS)}")

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top-k fused hits per query."""
        per = [r.search(queries, max(k, self.depth)) for r in self.retrievers]
        out = []
        for qi in range(len(queries)):
            lists = [p[qi] for p in per]
            if self.method == "rrf":
                out.append(rrf(lists, self.rrf_k, self.weights, depth=k))
            else:
                w = self.weights or [1.0 / len(lists)] * len(lists)
                out.append(convex(lists, w, self.norm, depth=k))
        return out
