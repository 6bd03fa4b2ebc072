"""Candidate pools, cached teacher scores and adaptive-margin hard-negative mining.

For each training query, candidates come from BM25 and the dense index fused by reciprocal-rank
fusion (as LG-ANNA's teacher pipeline). A teacher scores every (query, candidate) pair once; the
scores are kept as an artifact because they remember documents too. Negatives are mined
positive-aware (NV-Retriever): a candidate ``n`` is kept only if ``t(q,n) < ratio * t(q,p)``
(relative margin, default 0.95) or ``t(q,n) < t(q,p) - margin`` (absolute), so that likely false
negatives are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lethe.retrieval.fusion import rrf
from lethe.store.files import atomic_write_bytes
from lethe.types import Qrels


def build_pools(queries: Mapping[str, str], retrievers: Sequence, depth: int = 30,  # noqa: ANN001
                per_retriever: int = 100) -> dict[str, list[str]]:
    """qid -> up to ``depth`` candidate doc ids, RRF of the retrievers' top ``per_retriever``."""
    qids = list(queries)
    texts = [queries[q] for q in qids]
    runs = [r.search(texts, per_retriever) for r in retrievers]
    return {q: [h.doc_id for h in rrf([run[i] for run in runs], depth=depth)] for i, q in enumerate(qids)}


@dataclass
class TeacherScores:
    """Teacher scores by (query id, doc id); saved as one JSON file (an artifact's payload)."""

    scores: dict[str, dict[str, float]]
    teacher: str = ""

    @classmethod
    def compute(cls, pools: Mapping[str, Sequence[str]], qrels: Qrels, queries: Mapping[str, str],
                texts: Mapping[str, str], score_pairs: Callable[[list[tuple[str, str]]], np.ndarray],
                teacher: str = "") -> TeacherScores:
        """Score every pool candidate and every judged positive of each query."""
        keys = [(q, d) for q in pools for d in dict.fromkeys([*_positives(qrels, q), *pools[q]]) if d in texts]
        values = score_pairs([(queries[q], texts[d]) for q, d in keys]) if keys else np.zeros(0)
        out: dict[str, dict[str, float]] = {}
        for (q, d), v in zip(keys, values):
            out.setdefault(q, {})[d] = float(v)
        return cls(out, teacher)

    def doc_ids(self) -> set[str]:
        """Every document these scores mention."""
        return {d for per in self.scores.values() for d in per}

    def without(self, doc_ids: set[str]) -> TeacherScores:
        """A copy with the given documents removed."""
        return TeacherScores({q: {d: s for d, s in per.items() if d not in doc_ids}
                              for q, per in self.scores.items()}, self.teacher)

    def save(self, path: str | Path) -> None:
        """Write atomically as JSON."""
        data = json.dumps({"teacher": self.teacher, "scores": self.scores}).encode()
        atomic_write_bytes(path, lambda fh: fh.write(data))

    @classmethod
    def load(cls, path: str | Path) -> TeacherScores:
        """Read a file written by :meth:`save`."""
        obj = json.loads(Path(path).read_text())
        return cls(obj["scores"], obj.get("teacher", ""))


def _positives(qrels: Qrels, qid: str, min_rel: int = 1) -> list[str]:
    return [d for d, r in sorted(qrels.get(qid, {}).items(), key=lambda kv: -kv[1]) if r >= min_rel]


@dataclass(frozen=True)
class MinedExample:
    """One training example: query, a positive, negatives, and the teacher scores of [pos, *negs]."""

    query_id: str
    positive: str
    negatives: tuple[str, ...]
    teacher: tuple[float, ...]


def mine(pools: Mapping[str, Sequence[str]], qrels: Qrels, teacher: TeacherScores, n_negatives: int = 7,
         ratio: float | None = 0.95, margin: float | None = None, min_rel: int = 1,
         transform: Callable[[float], float] | None = None) -> list[MinedExample]:
    """Positive-aware hard negatives: one example per (query, positive).

    Candidates are taken in pool order (best first); a candidate is dropped when it is judged
    relevant, or when its teacher score is within the margin of the positive's (``ratio``:
    ``t(n) < ratio * t(p)``, ``margin``: ``t(n) < t(p) - margin``). ``transform`` maps raw teacher
    scores first (e.g. a sigmoid, so that the ratio rule sees positive numbers).
    """
    f = transform or (lambda x: x)
    out = []
    for q, pool in pools.items():
        judged = set(qrels.get(q, {}))
        scores = teacher.scores.get(q, {})
        for p in _positives(qrels, q, min_rel):
            if p not in scores:
                continue
            tp = f(scores[p])
            negs = [d for d in pool if d not in judged and d in scores and _keep(f(scores[d]), tp, ratio, margin)]
            negs = negs[:n_negatives]
            if len(negs) < n_negatives:
                continue  # a fixed group size keeps the batch shapes simple; such queries are rare
            out.append(MinedExample(q, p, tuple(negs), tuple([scores[p], *(scores[d] for d in negs)])))
    return out


def _keep(tn: float, tp: float, ratio: float | None, margin: float | None) -> bool:
    if ratio is not None and not tn < ratio * tp:
        return False
    return margin is None or tn < tp - margin



def save_examples(path: str | Path, examples: Sequence[MinedExample]) -> None:
    """Write training groups as JSON lines (an artifact's record of exactly what it was trained on)."""
    rows = [json.dumps({"query_id": e.query_id, "positive": e.positive, "negatives": list(e.negatives),
                        "teacher": list(e.teacher)}) for e in examples]
    data = ("\n".join(rows) + "\n").encode() if rows else b""
    atomic_write_bytes(path, lambda fh: fh.write(data))


def load_examples(path: str | Path) -> list[MinedExample]:
    """Read a file written by :func:`save_examples`."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            o = json.loads(line)
            out.append(MinedExample(o["query_id"], o["positive"], tuple(o["negatives"]), tuple(o["teacher"])))
    return out
