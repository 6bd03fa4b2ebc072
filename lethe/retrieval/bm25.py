"""BM25 over a term-major sparse matrix, with *exact* deletion.

bm25s and rank_bm25 freeze N, the document frequencies and the average length at build time, so
a deleted document keeps shaping every score. Here the index stores raw term frequencies (CSR by
term) and document lengths; collection statistics are recomputed from them, and the per-posting
weights are recomputed lazily (one vectorised O(nnz) pass) after every change. ``delete`` removes
the documents' postings, lengths and ids, drops terms no longer used by any document, and
compacts the matrix: the index is then identical to one built without those documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lethe.errors import IndexError_
from lethe.retrieval.analysis import Analyzer
from lethe.retrieval.base import INDEX_READ_ERRORS, atomic_write_bytes, check_index_file, corrupt_index
from lethe.types import Doc, Hit

VARIANTS = ("lucene", "okapi")
FORMAT_VERSION = 1


class BM25Index:
    """BM25 (``lucene`` as bm25s/Lucene >= 8, or ``okapi`` as rank_bm25) with exact deletion."""

    def __init__(self, variant: str = "lucene", k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25,
                 analyzer: Analyzer | None = None) -> None:
        if variant not in VARIANTS:
            raise IndexError_(f"unknown BM25 variant {variant!r}; choose from {list(VARIANTS)}")
        self.variant, self.k1, self.b, self.epsilon = variant, float(k1), float(b), float(epsilon)
        self.analyzer = analyzer if analyzer is not None else Analyzer()
        self.terms: list[str | None] = []  # None: a hole left by a forgotten term
        self._holes = 0
        self.vocab: dict[str, int] = {}
        self.doc_ids: list[str] = []
        self.doc_index: dict[str, int] = {}
        self.doc_len = np.zeros(0, dtype=np.int64)
        self.indptr = np.zeros(1, dtype=np.int64)
        self.postings = np.zeros(0, dtype=np.int64)  # doc index of each posting
        self.tf = np.zeros(0, dtype=np.float64)
        self._weights: tuple[np.ndarray, np.ndarray] | None = None

    # -- building ------------------------------------------------------------------------------
    def add(self, docs: Sequence[Doc]) -> None:
        """Index documents (their ``contents``); an id already present is an error."""
        self.add_tokens([d.id for d in docs], [self.analyzer(d.contents) for d in docs])

    def add_tokens(self, ids: Sequence[str], tokens: Sequence[Sequence[str]]) -> None:
        """Index pre-tokenised documents (used to compare with reference implementations)."""
        if len(ids) != len(tokens):
            raise IndexError_(f"{len(ids)} ids but {len(tokens)} token lists")
        dup = [i for i in ids if i in self.doc_index]
        if dup or len(set(ids)) != len(ids):
            raise IndexError_(f"document ids already indexed or repeated: {dup[:5] or 'repeated in input'}")
        start = len(self.doc_ids)
        rows, cols = self._term_rows(tokens, start)
        self.doc_ids.extend(ids)
        self.doc_index.update((d, start + i) for i, d in enumerate(ids))
        self.doc_len = np.concatenate([self.doc_len, [len(t) for t in tokens]]).astype(np.int64)
        old_rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        old_tf = self.tf
        keys = self._keys(np.concatenate([old_rows, rows]), np.concatenate([self.postings, cols]))
        weights = np.concatenate([old_tf, np.ones(len(rows))])
        self._set_from_keys(keys, weights)

    def _term_rows(self, tokens: Sequence[Sequence[str]], start: int) -> tuple[np.ndarray, np.ndarray]:
        rows: list[int] = []
        cols: list[int] = []
        vocab, terms = self.vocab, self.terms
        for j, toks in enumerate(tokens):
            for t in toks:
                r = vocab.get(t)
                if r is None:
                    r = vocab[t] = len(terms)
                    terms.append(t)
                rows.append(r)
            cols.extend([start + j] * len(toks))
        return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)

    def _keys(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return rows * max(len(self.doc_ids), 1) + cols

    def _set_from_keys(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Rebuild the CSR arrays from (row * n_docs + col) keys with per-key counts to sum."""
        n_docs = max(len(self.doc_ids), 1)
        uniq, inverse = np.unique(keys, return_inverse=True)
        tf = np.bincount(inverse, weights=counts, minlength=len(uniq))
        rows, cols = uniq // n_docs, uniq % n_docs
        self.postings, self.tf = cols.astype(np.int64), tf.astype(np.float64)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(self.terms)))])
        self._weights = None

    # -- deleting ------------------------------------------------------------------------------
    def delete(self, doc_ids: Collection[str]) -> int:
        """Remove documents exactly; returns how many were present.

        Cost: a few vectorised passes over the postings (no re-tokenisation, no re-weighting:
        weights are computed at query time from tf, the per-document norms and the idf).
        """
        gone = np.asarray(sorted({self.doc_index[d] for d in doc_ids if d in self.doc_index}), dtype=np.int64)
        if not len(gone):
            return 0
        keep_doc = np.ones(len(self.doc_ids), dtype=bool)
        keep_doc[gone] = False
        dead = np.flatnonzero(~keep_doc[self.postings])
        removed_per_term = np.bincount(np.searchsorted(self.indptr, dead, side="right") - 1,
                                       minlength=len(self.terms))
        self.postings = np.delete(self.postings, dead)
        self.postings -= np.searchsorted(gone, self.postings)
        self.tf = np.delete(self.tf, dead)
        self.indptr = self.indptr - np.concatenate([[0], np.cumsum(removed_per_term)])
        self._forget_empty_terms(np.flatnonzero(removed_per_term))
        self.doc_ids = [d for d, k in zip(self.doc_ids, keep_doc) if k]
        self.doc_index = {d: i for i, d in enumerate(self.doc_ids)}
        self.doc_len = self.doc_len[keep_doc]
        self._weights = None
        return len(gone)

    def _forget_empty_terms(self, candidates: np.ndarray) -> None:
        """Forget terms no remaining document uses (a rebuild would not know them).

        Their rows stay as empty holes (cheap); the term strings are dropped at once, and the
        matrix is compacted when holes exceed a quarter of the rows.
        """
        df = np.diff(self.indptr)
        for r in candidates[df[candidates] == 0].tolist():
            term = self.terms[r]
            if term is not None:
                del self.vocab[term]
                self.terms[r] = None
                self._holes += 1
        if self._holes > max(1000, len(self.terms) // 4):
            self.compact()

    def compact(self) -> None:
        """Renumber terms without holes (same answers; smaller arrays)."""
        counts = np.diff(self.indptr)
        alive = counts > 0
        self.terms = [t for t, a in zip(self.terms, alive) if a]
        self.vocab = {t: i for i, t in enumerate(self.terms)}
        self.indptr = np.concatenate([[0], np.cumsum(counts[alive])]).astype(np.int64)
        self._holes = 0
        self._weights = None

    # -- statistics and scoring ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.doc_ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.doc_index

    @property
    def df(self) -> np.ndarray:
        """Document frequency of every term (row order of ``terms``)."""
        return np.diff(self.indptr)

    @property
    def avgdl(self) -> float:
        """Average document length in terms (0 for an empty index)."""
        return float(self.doc_len.sum() / len(self.doc_len)) if len(self.doc_len) else 0.0

    def idf(self) -> np.ndarray:
        """IDF of every term under the current collection statistics."""
        n, df = float(len(self.doc_ids)), self.df.astype(np.float64)
        if self.variant == "lucene":
            return np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        live = df > 0
        if live.any():
            idf = np.where(idf < 0, self.epsilon * idf[live].sum() / live.sum(), idf)
        return idf

    def _query_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(idf per term, BM25 length norm per document), recomputed after each change: O(V + N)."""
        if self._weights is None:
            dl = self.doc_len.astype(np.float64)
            norm = self.k1 * (1.0 - self.b + self.b * dl / max(self.avgdl, 1e-12))
            self._weights = (self.idf(), norm)
        return self._weights

    def score_tokens(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every document (index order) for one tokenised query.

        Repeated query terms count once per occurrence (as rank_bm25 and bm25s do).
        """
        idf, norm = self._query_state()
        rows = [self.vocab[t] for t in tokens if t in self.vocab]
        if not rows:
            return np.zeros(len(self.doc_ids))
        ip = self.indptr
        idx = np.concatenate([self.postings[ip[r] : ip[r + 1]] for r in rows])
        tf = np.concatenate([self.tf[ip[r] : ip[r + 1]] for r in rows])
        term_idf = np.repeat(idf[rows], ip[np.add(rows, 1)] - ip[rows])
        val = term_idf * tf / (tf + norm[idx])
        if self.variant == "okapi":
            val *= self.k1 + 1.0
        return np.bincount(idx, weights=val, minlength=len(self.doc_ids))

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top-k hits per query; ties broken by insertion order; zero-score documents omitted."""
        return [self.search_tokens(self.analyzer(q), k) for q in queries]

    def search_tokens(self, tokens: Sequence[str], k: int = 10) -> list[Hit]:
        """Top-k hits for one tokenised query."""
        scores = self.score_tokens(tokens)
        top = _top_k(scores, k)
        top = top[scores[top] > 0]
        ids = self.doc_ids
        return [Hit(ids[i], s) for i, s in zip(top.tolist(), scores[top].tolist())]

    # -- identity and persistence --------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The configuration (variant, k1, b, epsilon, analyzer)."""
        return {"variant": self.variant, "k1": self.k1, "b": self.b, "epsilon": self.epsilon,
                "analyzer": self.analyzer.config()}

    def stats(self) -> dict[str, Any]:
        """N, average length and document frequency of every term (by term)."""
        return {"n_docs": len(self), "avgdl": self.avgdl,
                "df": {t: n for t, n in zip(self.terms, self.df.tolist()) if t is not None}}

    def fingerprint(self) -> str:
        """sha256 of a canonical form (params, docs by id, sorted term:tf lists); order-free."""
        if self._holes:
            return self.copy_compacted().fingerprint()
        h = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode())
        term_order = np.argsort(np.asarray(self.terms, dtype=object)) if self.terms else np.zeros(0, int)
        term_rank = np.empty(len(self.terms), dtype=np.int64)
        term_rank[term_order] = np.arange(len(self.terms))
        doc_order = sorted(range(len(self.doc_ids)), key=self.doc_ids.__getitem__)
        doc_rank = np.empty(len(self.doc_ids), dtype=np.int64)
        doc_rank[doc_order] = np.arange(len(self.doc_ids))
        rows = term_rank[np.repeat(np.arange(len(self.terms)), np.diff(self.indptr))]
        cols = doc_rank[self.postings]
        order = np.lexsort((rows, cols))
        h.update("\n".join(sorted(self.terms)).encode())
        h.update("\n".join(self.doc_ids[i] for i in doc_order).encode())
        h.update(self.doc_len[doc_order].astype("<i8").tobytes())
        for arr in (cols[order], rows[order], self.tf[order]):
            h.update(np.ascontiguousarray(arr).astype("<f8" if arr.dtype.kind == "f" else "<i8").tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write the index to one ``.npz`` file atomically (temp file + rename)."""
        if self._holes:
            self.compact()
        meta = {"format": FORMAT_VERSION, "params": self.params(), "terms": self.terms,
                "doc_ids": self.doc_ids, "lethe_version": _lethe_version()}
        arrays = {"indptr": self.indptr, "postings": self.postings, "tf": self.tf,
                  "doc_len": self.doc_len,
                  "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> BM25Index:
        """Load an index written by :meth:`save`.

        A missing, truncated or corrupt file raises :class:`IndexError_` naming it and saying how to rebuild it.
        """
        path = Path(path)
        check_index_file(path)
        try:
            return cls._from_npz(path)
        except INDEX_READ_ERRORS as exc:
            raise corrupt_index(path, "BM25", exc) from exc

    @classmethod
    def _from_npz(cls, path: Path) -> BM25Index:
        """Read and check the arrays and metadata (any damage raises one of ``INDEX_READ_ERRORS``)."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = {k: z[k] for k in ("indptr", "postings", "tf", "doc_len")}
        params = dict(meta["params"])
        index = cls(analyzer=Analyzer(**params.pop("analyzer")), **params)
        index.terms, index.doc_ids = list(meta["terms"]), list(meta["doc_ids"])
        index.vocab = {t: i for i, t in enumerate(index.terms)}
        index.doc_index = {d: i for i, d in enumerate(index.doc_ids)}
        index.indptr, index.postings = arrays["indptr"], arrays["postings"]
        index.tf, index.doc_len = arrays["tf"], arrays["doc_len"]
        index._check_shapes()
        return index

    def _check_shapes(self) -> None:
        """Raise ValueError if the arrays disagree with each other or with the term and id lists."""
        n_post = int(self.indptr[-1]) if len(self.indptr) else -1
        if (len(self.indptr) != len(self.terms) + 1 or len(self.doc_len) != len(self.doc_ids)
                or len(self.postings) != n_post or len(self.tf) != n_post):
            raise ValueError("array sizes disagree with the term and document lists")

    def copy_compacted(self) -> BM25Index:
        """A copy without term holes."""
        new = self.copy()
        new.compact()
        return new

    def copy(self) -> BM25Index:
        """An independent copy (arrays copied, analyzer shared: it is stateless but for a cache)."""
        new = BM25Index(self.variant, self.k1, self.b, self.epsilon, self.analyzer)
        new.terms, new.vocab = list(self.terms), dict(self.vocab)
        new.doc_ids, new.doc_index = list(self.doc_ids), dict(self.doc_index)
        new.doc_len, new.indptr = self.doc_len.copy(), self.indptr.copy()
        new.postings, new.tf = self.postings.copy(), self.tf.copy()
        new._holes = self._holes
        return new


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, descending, ties by index (stable)."""
    n = len(scores)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1)[:k]
        kth = scores[part].min()
        part = np.flatnonzero(scores >= kth)  # include every tie at the boundary
    else:
        part = np.arange(n)
    order = np.lexsort((part, -scores[part]))
    return part[order][:k]


def _lethe_version() -> str:
    from lethe import __version__

    return __version__
