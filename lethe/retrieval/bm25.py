"""BM25 over a term-major sparse matrix, with *exact* deletion.

bm25s and rank_bm25 freeze N, the document frequencies and the average length at build time, so
a deleted document keeps shaping every score. Here the index stores raw term frequencies (CSR by
term) and document lengths, and keeps the collection statistics (N, df, total length) current.

``delete`` costs O(total length of the deleted documents): it marks them dead (tombstones), takes
their terms (from a doc-major forward index) off the document frequencies and forgets terms no
remaining document uses. Every change bumps a statistics version; the per-posting BM25 weights of
a term are recomputed (vectorised, with the current statistics; dead documents' postings weigh 0)
when a search first touches the term after a change. Scores are those of an index built from the
remaining documents alone, bit for bit. :meth:`compact` drops the dead postings, documents and
forgotten terms physically (``save`` and ``fingerprint`` see the compacted form only).

Search sums the precomputed weights of the query terms' postings, in query-term order, and keeps
the top k positive scores (ties by insertion order). A batch of queries is scored in one call of a
numba kernel when numba is installed (an optional dependency), else per query with numpy; both
paths give bit-identical scores.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import types
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import chain, repeat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lethe.errors import IndexError_
from lethe.retrieval.analysis import Analyzer
from lethe.retrieval.base import INDEX_READ_ERRORS, atomic_write_bytes, check_index_file, corrupt_index
from lethe.types import Doc, Hit

VARIANTS = ("lucene", "okapi")
BACKENDS = ("auto", "numba", "numpy")
#: batch size from which ``backend="auto"`` loads numba (when installed)
NUMBA_MIN_BATCH = 64
#: hits buffered per numba kernel call (a batch is scored in chunks of queries)
KERNEL_CHUNK_HITS = 1 << 22
#: a delete compacts the index once dead documents exceed half the slots, or forgotten terms a
#: quarter of the rows, and either exceeds this count (amortised O(1) per deleted posting)
COMPACT_MIN = 1000
FORMAT_VERSION = 1
_STALE = -1  # term stamp: weights never computed


class BM25Index:
    """BM25 (``lucene`` as bm25s/Lucene >= 8, or ``okapi`` as rank_bm25) with exact deletion.

    ``backend`` picks the search kernel: ``auto`` (numba if installed, for batches of
    ``NUMBA_MIN_BATCH`` queries or once loaded; else numpy), ``numba`` or ``numpy``. It changes
    speed only, never scores or rankings, and is not part of :meth:`params`.

    Documents live in slots (insertion order); a deleted document's slot stays, dead, until
    :meth:`compact`. ``doc_ids`` lists the live documents only.
    """

    def __init__(self, variant: str = "lucene", k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25,
                 analyzer: Analyzer | None = None, backend: str = "auto") -> None:
        if variant not in VARIANTS:
            raise IndexError_(f"unknown BM25 variant {variant!r}; choose from {list(VARIANTS)}")
        self.variant, self.k1, self.b, self.epsilon = variant, float(k1), float(b), float(epsilon)
        self.analyzer = analyzer if analyzer is not None else Analyzer()
        self.terms: list[str | None] = []  # None: a hole left by a forgotten term
        self._holes = 0
        self.vocab: dict[str, int] = {}
        self._ids: list[str | None] = []  # per slot; None: deleted
        self.doc_index: dict[str, int] = {}  # live id -> slot
        self.alive = np.zeros(0, dtype=bool)  # per slot
        self.doc_len = np.zeros(0, dtype=np.int64)  # per slot
        self._n_live, self._total_len = 0, 0
        self.indptr = np.zeros(1, dtype=np.int64)
        self.postings = np.zeros(0, dtype=np.int64)  # slot of each posting
        self.tf = np.zeros(0, dtype=np.float64)
        self._df = np.zeros(0, dtype=np.int64)  # live documents per term
        # doc-major forward index: the term rows of slot i's tokens are fwd_rows[fwd_ptr[i]:fwd_ptr[i+1]]
        # (repeats allowed); None: built from the postings by the next delete
        self._fwd_ptr: np.ndarray | None = np.zeros(1, dtype=np.int64)
        self._fwd_rows: np.ndarray | None = np.zeros(0, dtype=np.int32)
        self._version = 0  # bumped by every change of the collection statistics
        self._weights = np.zeros(0)  # BM25 weight of every posting, valid for rows stamped _version
        self._term_max = np.zeros(0)  # per term, its postings' largest positive weight (same validity)
        self._stamp = np.zeros(0, dtype=np.int64)  # per term, the version its weights were computed at
        self._floor_cache: tuple[int, float] | None = None  # (version, okapi idf floor)
        self._id_array: np.ndarray | None = None  # slot ids as an object array (fast gathers)
        self._backend = "auto"
        self.backend = backend  # checked

    # -- building ------------------------------------------------------------------------------
    def add(self, docs: Sequence[Doc]) -> None:
        """Index documents (their ``contents``); an id already present is an error."""
        self.add_tokens([d.id for d in docs], [self.analyzer(d.contents) for d in docs])

    def add_tokens(self, ids: Sequence[str], tokens: Sequence[Sequence[str]]) -> None:
        """Index pre-tokenised documents (used to compare with reference implementations).

        Cost O(nnz) (the matrix is merged anew), so dead documents are compacted away first.
        """
        if len(ids) != len(tokens):
            raise IndexError_(f"{len(ids)} ids but {len(tokens)} token lists")
        dup = [i for i in ids if i in self.doc_index]
        if dup or len(set(ids)) != len(ids):
            raise IndexError_(f"document ids already indexed or repeated: {dup[:5] or 'repeated in input'}")
        if self._n_live < len(self._ids) or self._holes:
            self.compact()
        start = len(self._ids)
        rows, cols = self._term_rows(tokens, start)
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        self._extend_forward(rows, lengths)
        self._ids.extend(ids)
        self.doc_index.update((d, start + i) for i, d in enumerate(ids))
        self.doc_len = np.concatenate([self.doc_len, lengths])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), dtype=bool)])
        self._n_live += len(ids)
        self._total_len += int(lengths.sum())
        old_rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        keys = self._keys(np.concatenate([old_rows, rows]), np.concatenate([self.postings, cols]))
        self._set_from_keys(keys, np.concatenate([self.tf, np.ones(len(rows))]))

    def _term_rows(self, tokens: Sequence[Sequence[str]], start: int) -> tuple[np.ndarray, np.ndarray]:
        """Term row and slot of every token (new terms get new rows), document after document."""
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

    def _extend_forward(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        """Append the new documents' token rows to the forward index (if it is built)."""
        if self._fwd_ptr is None or self._fwd_rows is None:
            return
        self._fwd_rows = np.concatenate([self._fwd_rows, rows.astype(np.int32)])
        self._fwd_ptr = np.concatenate([self._fwd_ptr, self._fwd_ptr[-1] + np.cumsum(lengths)])

    def _keys(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return rows * max(len(self._ids), 1) + cols

    def _set_from_keys(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Rebuild the CSR arrays from (row * n_docs + col) keys with per-key counts to sum."""
        n_docs = max(len(self._ids), 1)
        uniq, inverse = np.unique(keys, return_inverse=True)
        tf = np.bincount(inverse, weights=counts, minlength=len(uniq))
        rows, cols = uniq // n_docs, uniq % n_docs
        self.postings, self.tf = cols.astype(np.int64), tf.astype(np.float64)
        self._df = np.bincount(rows, minlength=len(self.terms)).astype(np.int64)
        self.indptr = np.concatenate([[0], np.cumsum(self._df)]).astype(np.int64)
        self._stale_weights()

    def _stale_weights(self) -> None:
        """New arrays (postings or terms) came: no term's weights are computed yet."""
        self._weights = np.zeros(len(self.postings))
        self._term_max = np.zeros(len(self.terms))
        self._stamp = np.full(len(self.terms), _STALE, dtype=np.int64)
        self._id_array = None
        self._changed()

    def _changed(self) -> None:
        """The collection statistics changed: every term's weights are stale."""
        self._version += 1

    # -- deleting ------------------------------------------------------------------------------
    def delete(self, doc_ids: Collection[str]) -> int:
        """Remove documents exactly; returns how many were present.

        Cost O(total length of the deleted documents + len(doc_ids)): the documents are marked
        dead and their terms' document frequencies decremented; terms left without documents are
        forgotten at once. The touched weights are recomputed by the next search that needs them
        (or all of them by :meth:`prepare`).
        """
        slots = np.fromiter((self.doc_index.pop(d) for d in set(doc_ids) if d in self.doc_index), dtype=np.int64)
        if not len(slots):
            return 0
        self._bury(slots)
        rows, counts = np.unique(self._doc_terms(slots), return_counts=True)
        self._df[rows] -= counts
        self._forget_terms(rows[self._df[rows] == 0])
        self._changed()
        if self._compaction_due():
            self.compact()
        return len(slots)

    def _bury(self, slots: np.ndarray) -> None:
        """Mark ``slots`` dead: alive flag, ids, N and the total length."""
        self.alive[slots] = False
        for s in slots.tolist():
            self._ids[s] = None
        if self._id_array is not None:
            self._id_array[slots] = None
        self._n_live -= len(slots)
        self._total_len -= int(self.doc_len[slots].sum())

    def _doc_terms(self, slots: np.ndarray) -> np.ndarray:
        """The distinct term rows of each of ``slots`` (concatenated: a row repeats across documents)."""
        ptr, fwd = self._forward()
        starts, ends = ptr[slots], ptr[slots + 1]
        rows = fwd[_ranges(starts, ends)].astype(np.int64)
        owner = np.repeat(np.arange(len(slots), dtype=np.int64), ends - starts)
        return np.unique(owner * max(len(self.terms), 1) + rows) % max(len(self.terms), 1)

    def _forward(self) -> tuple[np.ndarray, np.ndarray]:
        """The forward index, built from the postings if missing (one stable argsort, O(nnz log nnz))."""
        if self._fwd_ptr is None or self._fwd_rows is None:
            rows = np.repeat(np.arange(len(self.terms), dtype=np.int32), np.diff(self.indptr))
            order = np.argsort(self.postings, kind="stable")
            counts = np.bincount(self.postings, minlength=len(self._ids))
            self._fwd_rows = rows[order]
            self._fwd_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self._fwd_ptr, self._fwd_rows

    def _forget_terms(self, rows: np.ndarray) -> None:
        """Forget terms no live document uses (a rebuild would not know them): their strings go at
        once; their rows stay as holes until :meth:`compact`."""
        for r in rows.tolist():
            term = self.terms[r]
            if term is not None:
                del self.vocab[term]
                self.terms[r] = None
                self._holes += 1

    def _compaction_due(self) -> bool:
        dead = len(self._ids) - self._n_live
        return ((dead > COMPACT_MIN and 2 * dead > len(self._ids))
                or (self._holes > COMPACT_MIN and 4 * self._holes > len(self.terms)))

    def compact(self) -> None:
        """Drop dead documents, their postings and forgotten terms from the arrays: O(nnz).

        Answers do not change (nor do the valid weights: the statistics are the same); slots and
        term rows are renumbered in order.
        """
        keep_row = self._df > 0
        new_row = np.cumsum(keep_row) - 1
        new_slot = np.cumsum(self.alive) - 1
        post_rows = np.repeat(np.arange(len(self.terms)), np.diff(self.indptr))
        keep = self.alive[self.postings]
        self.postings = new_slot[self.postings[keep]]
        self.tf, self._weights = self.tf[keep], self._weights[keep]
        counts = np.bincount(post_rows[keep], minlength=len(self.terms))[keep_row]
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._compact_forward(new_row)
        self.terms = [t for t, k in zip(self.terms, keep_row.tolist()) if k]
        self.vocab = {t: i for i, t in enumerate(self.terms) if t is not None}
        self._df, self._term_max, self._stamp = self._df[keep_row], self._term_max[keep_row], self._stamp[keep_row]
        self._ids = [d for d in self._ids if d is not None]
        self.doc_index = {d: i for i, d in enumerate(self._ids) if d is not None}
        self.doc_len = self.doc_len[self.alive]
        self.alive = np.ones(len(self._ids), dtype=bool)
        self._holes = 0
        self._id_array = None

    def _compact_forward(self, new_row: np.ndarray) -> None:
        """Drop the dead slots' entries of the forward index and renumber its rows."""
        if self._fwd_ptr is None or self._fwd_rows is None:
            return
        lengths = np.diff(self._fwd_ptr)
        rows = self._fwd_rows[np.repeat(self.alive, lengths)]
        self._fwd_rows = new_row[rows].astype(np.int32)
        self._fwd_ptr = np.concatenate([[0], np.cumsum(lengths[self.alive])]).astype(np.int64)

    @property
    def backend(self) -> str:
        """The search kernel: ``auto``, ``numba`` or ``numpy`` (settable; scores never depend on it)."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise IndexError_(f"unknown BM25 backend {value!r}; choose from {list(BACKENDS)}")
        self._backend = value

    # -- statistics and scoring ----------------------------------------------------------------
    def __len__(self) -> int:
        return self._n_live

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.doc_index

    @property
    def doc_ids(self) -> list[str]:
        """The live document ids, in insertion order (a new list: O(N))."""
        return [d for d in self._ids if d is not None]

    @property
    def df(self) -> np.ndarray:
        """Document frequency of every term (row order of ``terms``; 0 for a forgotten term)."""
        return self._df.copy()

    @property
    def avgdl(self) -> float:
        """Average document length in terms (0 for an empty index)."""
        return self._total_len / self._n_live if self._n_live else 0.0

    def idf(self) -> np.ndarray:
        """IDF of every term under the current collection statistics."""
        return self._idf(self._df)

    def _idf(self, df_rows: np.ndarray) -> np.ndarray:
        """IDF of terms with document frequencies ``df_rows``."""
        n, df = float(self._n_live), df_rows.astype(np.float64)
        if self.variant == "lucene":
            return np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        return np.where(idf < 0, self._okapi_floor(), idf) if (idf < 0).any() else idf

    def _okapi_floor(self) -> float:
        """``epsilon`` times the mean okapi idf of the live terms (rank_bm25's floor for negative idf).

        The mean is summed by distinct df, ascending (count * idf each): an order that does not
        depend on term rows, so a rebuild over the same documents gets the same bits. Cached per
        statistics version (O(V + N)).
        """
        if self._floor_cache is None or self._floor_cache[0] != self._version:
            counts = np.bincount(self._df, minlength=1)
            counts[0] = 0
            values = np.flatnonzero(counts)
            floor = 0.0
            if len(values):
                n, df = float(self._n_live), values.astype(np.float64)
                idf = np.log(n - df + 0.5) - np.log(df + 0.5)
                floor = self.epsilon * float((counts[values] * idf).sum()) / float(counts[values].sum())
            self._floor_cache = (self._version, floor)
        return self._floor_cache[1]

    def prepare(self) -> None:
        """Compute every stale term's weights now (optional: a search computes those it touches).

        O(nnz + N) after a change. Concurrent searches are safe: they compute the same values.
        """
        stale = np.flatnonzero((self._stamp != self._version) & (self._df > 0))
        kernels = self._kernels()
        if kernels is not None and len(stale) > len(self._stamp) // 2:
            weights, term_max = np.empty(len(self.tf)), np.empty(len(self.terms))
            factor = self.k1 + 1.0 if self.variant == "okapi" else 1.0
            kernels.weigh(self.indptr, self.postings, self.tf, self.idf(), self._length_norms(), factor,
                          self.alive, weights, term_max)
            self._weights, self._term_max = weights, term_max
            self._stamp = np.full(len(self.terms), self._version, dtype=np.int64)
        else:
            self._refresh(stale)
        self._ids_array()

    def _ids_array(self) -> np.ndarray:
        """The slot ids as an object array (built once per add or compaction)."""
        if self._id_array is None:
            ids = np.empty(len(self._ids), dtype=object)
            ids[:] = self._ids
            self._id_array = ids
        return self._id_array

    def _refresh(self, rows: np.ndarray) -> None:
        """Recompute the weights and maxima of the stale terms among ``rows`` (numba when loaded,
        else vectorised numpy; the same bits either way)."""
        stale = rows[self._stamp[rows] != self._version]
        if not len(stale):
            return
        stale = np.unique(stale)
        idf = self._idf(self._df[stale])
        kernels = self._kernels()
        if kernels is not None:
            factor = self.k1 + 1.0 if self.variant == "okapi" else 1.0
            kernels.weigh_rows(stale, self.indptr, self.postings, self.tf, idf, self.doc_len, self.k1, self.b,
                               max(self.avgdl, 1e-12), factor, self.alive, self._weights, self._term_max)
        else:
            self._refresh_numpy(stale, idf)
        self._stamp[stale] = self._version  # last: a row is valid once stamped

    def _refresh_numpy(self, stale: np.ndarray, idf: np.ndarray) -> None:
        """:meth:`_refresh` for numpy: the weights of rows ``stale`` (with idfs ``idf``) and their maxima."""
        starts, ends = self.indptr[stale], self.indptr[stale + 1]
        pos = _ranges(starts, ends)
        weights = self._posting_weights(pos, np.repeat(idf, ends - starts))
        self._weights[pos] = weights
        top = np.zeros(len(stale))
        nonempty = ends > starts
        if nonempty.any():
            offsets = np.concatenate([[0], np.cumsum(ends - starts)[:-1]])[nonempty]
            top[nonempty] = np.maximum.reduceat(weights, offsets)
        self._term_max[stale] = np.maximum(top, 0.0)

    def _kernels(self, batch: int = 0) -> _Kernels | None:
        """The compiled kernels, or None to use numpy.

        ``auto`` uses numba once it is loaded, or to load it for a batch of at least
        ``NUMBA_MIN_BATCH`` queries (importing numba costs a third of a second: more than numpy
        spends on a few hundred queries).
        """
        if self.backend == "numpy":
            return None
        if self.backend == "auto" and batch < NUMBA_MIN_BATCH and not _numba_kernels.cache_info().currsize:
            return None
        kernels = _numba_kernels()
        if kernels is None and self.backend == "numba":
            from lethe.errors import MissingDependency

            raise MissingDependency("backend='numba' needs numba: pip install numba")
        return kernels

    def _length_norms(self) -> np.ndarray:
        """BM25 length normalisation ``k1 * (1 - b + b * dl / avgdl)`` of every slot."""
        return self._norms(self.doc_len)

    def _norms(self, doc_len: np.ndarray) -> np.ndarray:
        """``k1 * (1 - b + b * dl / avgdl)`` for lengths ``doc_len`` (elementwise: same bits per document)."""
        dl = doc_len.astype(np.float64)
        return self.k1 * (1.0 - self.b + self.b * dl / max(self.avgdl, 1e-12))

    def _posting_weights(self, pos: np.ndarray, term_idf: np.ndarray) -> np.ndarray:
        """BM25 weight of the postings ``pos``, ``idf * tf / (tf + norm) * factor`` (what a query
        sums; the numba ``_weigh`` does the same operations in the same order), 0 for dead documents."""
        docs, tf = self.postings[pos], self.tf[pos]
        weights = term_idf * tf / (tf + self._norms(self.doc_len[docs]))
        weights *= self.k1 + 1.0 if self.variant == "okapi" else 1.0
        weights[~self.alive[docs]] = 0.0
        return weights

    def _rows(self, tokens: Sequence[str]) -> list[int]:
        """Term rows of the known query tokens, in query order (repeats kept)."""
        get = self.vocab.get
        return [r for r in map(get, tokens) if r is not None]

    def _refresh_queries(self, rows: Iterable[list[int]]) -> None:
        """Make the weights of every term of the queries ``rows`` current."""
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64)
        if len(flat):
            self._refresh(flat)

    def score_tokens(self, tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every live document (insertion order) for one tokenised query.

        Repeated query terms count once per occurrence (as rank_bm25 and bm25s do).
        """
        rows = self._rows(tokens)
        self._refresh_queries([rows])
        idx, weights = self._gather(rows)
        dense = np.bincount(idx, weights=weights, minlength=len(self._ids))
        return dense if self._n_live == len(self._ids) else dense[self.alive]

    def _gather(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(slot, weight) of the postings of ``rows``, row after row."""
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        ip, post, w = self.indptr, self.postings, self._weights
        if len(rows) == 1:
            a, b = ip[rows[0]], ip[rows[0] + 1]
            return post[a:b], w[a:b]
        spans = [(ip[r], ip[r + 1]) for r in rows]
        return (np.concatenate([post[a:b] for a, b in spans]), np.concatenate([w[a:b] for a, b in spans]))

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top-k hits per query; ties broken by insertion order; zero-score documents omitted."""
        return self.search_tokens_batch([self.analyzer(q) for q in queries], k)

    def search_tokens(self, tokens: Sequence[str], k: int = 10) -> list[Hit]:
        """Top-k hits for one tokenised query."""
        return self.search_tokens_batch([tokens], k)[0]

    def search_tokens_batch(self, queries: Sequence[Sequence[str]], k: int = 10) -> list[list[Hit]]:
        """Top-k hits for each tokenised query (one kernel call for the whole batch with numba)."""
        return self._hits(*self.top_k_tokens_batch(queries, k))

    def top_k_tokens_batch(self, queries: Sequence[Sequence[str]], k: int = 10,
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`search_tokens_batch` returns, as arrays (no Python object per hit).

        Returns (slots, scores, hits per query): the hits of query i are the ``counts[i]``
        entries after those of the queries before it, best first. A slot indexes ``doc_ids`` as
        long as no document was deleted since the last :meth:`compact` (the ids of the slots are
        in the hits :meth:`search_tokens_batch` returns).
        """
        rows = [self._rows(q) for q in queries]
        if k <= 0 or not self._n_live:
            return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(len(rows), dtype=np.int64)
        self._refresh_queries(rows)
        kernels = self._kernels(len(rows))
        return self._top_k_numba(kernels, rows, k) if kernels else self._top_k_numpy(rows, k)

    def _top_k_numba(self, kernels: _Kernels, rows: list[list[int]], k: int,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The numba path: flatten the queries' rows and score them in one call per chunk of queries
        (a chunk's output buffer holds ``chunk * k`` hits: at most ``KERNEL_CHUNK_HITS``)."""
        k = min(k, self._n_live)
        step = max(1, KERNEL_CHUNK_HITS // k)
        parts = [self._top_k_chunk(kernels, rows[i : i + step], k) for i in range(0, len(rows), step)]
        if len(parts) == 1:
            return parts[0]
        docs, scores, counts = zip(*parts)
        return np.concatenate(docs), np.concatenate(scores), np.concatenate(counts)

    def _top_k_chunk(self, kernels: _Kernels, rows: list[list[int]], k: int,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One kernel call for the queries ``rows``."""
        q_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=q_ptr[1:])
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(q_ptr[-1]))
        return kernels.top_k(q_ptr, flat, self.indptr, self.postings, self._weights, self._term_max,
                             len(self._ids), k)

    def _top_k_numpy(self, rows: list[list[int]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The numpy path: one dense bincount and one top-k per query (dead slots score 0)."""
        n = len(self._ids)
        docs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        scores: list[np.ndarray] = [np.zeros(0)]
        for r in rows:
            idx, weights = self._gather(r)
            dense = np.bincount(idx, weights=weights, minlength=n)
            top = _positive_top_k(dense, k)
            docs.append(top)
            scores.append(dense[top])
        counts = np.fromiter(map(len, docs[1:]), dtype=np.int64, count=len(rows))
        return np.concatenate(docs), np.concatenate(scores), counts

    def _hits(self, docs: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> list[list[Hit]]:
        """Split flat (slot, score) arrays into per-query hit lists.

        The cyclic garbage collector is paused meanwhile: the new tuples hold only strings and
        floats (no cycles), and tens of thousands of them would otherwise trigger a young
        collection every 700 and push themselves into the old generations, which in a loop of
        searches costs more than building them (a full collection every few batches).
        """
        ids, values = self._ids_array()[docs].tolist(), scores.tolist()
        ends = np.cumsum(counts).tolist()
        with _gc_paused():
            flat = _make_hits(ids, values)
            return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]

    # -- identity and persistence --------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The configuration (variant, k1, b, epsilon, analyzer)."""
        return {"variant": self.variant, "k1": self.k1, "b": self.b, "epsilon": self.epsilon,
                "analyzer": self.analyzer.config()}

    def stats(self) -> dict[str, Any]:
        """N, average length and document frequency of every term (by term)."""
        return {"n_docs": len(self), "avgdl": self.avgdl,
                "df": {t: n for t, n in zip(self.terms, self._df.tolist()) if t is not None}}

    def _compacted(self) -> bool:
        return not self._holes and self._n_live == len(self._ids)

    def fingerprint(self) -> str:
        """sha256 of a canonical form (params, docs by id, sorted term:tf lists); order-free.

        Computed over the compacted form (on a copy if need be), so it equals a fresh build's.
        """
        if not self._compacted():
            return self.copy_compacted().fingerprint()
        h = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode())
        term_order = np.argsort(np.asarray(self.terms, dtype=object)) if self.terms else np.zeros(0, int)
        term_rank = np.empty(len(self.terms), dtype=np.int64)
        term_rank[term_order] = np.arange(len(self.terms))
        ids = self.doc_ids
        doc_order = sorted(range(len(ids)), key=ids.__getitem__)
        doc_rank = np.empty(len(ids), dtype=np.int64)
        doc_rank[doc_order] = np.arange(len(ids))
        rows = term_rank[np.repeat(np.arange(len(self.terms)), np.diff(self.indptr))]
        cols = doc_rank[self.postings]
        order = np.lexsort((rows, cols))
        h.update("\n".join(sorted(t for t in self.terms if t is not None)).encode())
        h.update("\n".join(ids[i] for i in doc_order).encode())
        h.update(self.doc_len[doc_order].astype("<i8").tobytes())
        for arr in (cols[order], rows[order], self.tf[order]):
            h.update(np.ascontiguousarray(arr).astype("<f8" if arr.dtype.kind == "f" else "<i8").tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write the index to one ``.npz`` file atomically (temp file + rename).

        The index is compacted first: the file holds no byte of a deleted document or forgotten term.
        """
        if not self._compacted():
            self.compact()
        meta = {"format": FORMAT_VERSION, "params": self.params(), "terms": self.terms,
                "doc_ids": self._ids, "lethe_version": _lethe_version()}
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
        index.terms, index._ids = list(meta["terms"]), list(meta["doc_ids"])
        index.indptr, index.postings = arrays["indptr"], arrays["postings"]
        index.tf, index.doc_len = arrays["tf"], arrays["doc_len"]
        index._check_shapes()
        index._derive()
        return index

    def _check_shapes(self) -> None:
        """Raise ValueError if the arrays disagree with each other or with the term and id lists."""
        n_post = int(self.indptr[-1]) if len(self.indptr) else -1
        if (len(self.indptr) != len(self.terms) + 1 or len(self.doc_len) != len(self._ids)
                or len(self.postings) != n_post or len(self.tf) != n_post):
            raise ValueError("array sizes disagree with the term and document lists")

    def _derive(self) -> None:
        """Set the state derived from compacted arrays (every slot live, every term used): ids,
        statistics, stale weights; the forward index is left to the first delete."""
        self.vocab = {t: i for i, t in enumerate(self.terms) if t is not None}
        self.doc_index = {d: i for i, d in enumerate(self._ids) if d is not None}
        self.alive = np.ones(len(self._ids), dtype=bool)
        self._n_live, self._total_len = len(self._ids), int(self.doc_len.sum())
        self._df = np.diff(self.indptr).astype(np.int64)
        self._fwd_ptr = self._fwd_rows = None
        self._stale_weights()

    def copy_compacted(self) -> BM25Index:
        """A compacted copy (no dead documents, no forgotten terms)."""
        new = self.copy()
        new.compact()
        return new

    def copy(self) -> BM25Index:
        """An independent copy (arrays copied, analyzer shared: it is stateless but for a cache).

        The copy's weights are computed anew, by its searches or :meth:`prepare`.
        """
        new = BM25Index(self.variant, self.k1, self.b, self.epsilon, self.analyzer, self.backend)
        new.terms, new.vocab, new._holes = list(self.terms), dict(self.vocab), self._holes
        new._ids, new.doc_index = list(self._ids), dict(self.doc_index)
        new.alive, new.doc_len = self.alive.copy(), self.doc_len.copy()
        new._n_live, new._total_len = self._n_live, self._total_len
        new.indptr, new.postings, new.tf = self.indptr.copy(), self.postings.copy(), self.tf.copy()
        new._df = self._df.copy()
        if self._fwd_ptr is not None and self._fwd_rows is not None:
            new._fwd_ptr, new._fwd_rows = self._fwd_ptr.copy(), self._fwd_rows.copy()
        else:
            new._fwd_ptr = new._fwd_rows = None
        new._stale_weights()
        return new


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, e)`` for each pair (vectorised)."""
    lengths = ends - starts
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets


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


def _positive_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest *positive* scores, descending, ties by index."""
    cand = np.flatnonzero(scores > 0)
    top = _top_k(scores[cand], k)
    return cand[top]


def _make_hits(ids: list[str], scores: list[float]) -> list[Hit]:
    """``[Hit(i, s) ...]``, built with ``tuple.__new__`` (what a named tuple's constructor calls; 2-4x faster)."""
    return list(map(tuple.__new__, repeat(Hit), zip(ids, scores)))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector for the block (re-enabled after only if it was enabled)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Kernels(NamedTuple):
    """The numba-compiled functions: posting weights and batch top-k."""

    weigh: Callable[..., None]
    weigh_rows: Callable[..., None]
    top_k: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


@functools.cache
def _numba_kernels() -> _Kernels | None:
    """The jitted kernels, compiled on first use (cached on disk); None when numba is not installed."""
    try:
        import numba
    except ImportError:
        return None
    try:
        return _jit(numba, cache=True)
    except RuntimeError:  # no writable cache directory: compile per process
        return _jit(numba, cache=False)


def _jit(numba: Any, cache: bool) -> _Kernels:
    """Compile the kernels and their helpers (numba code can call only numba code).

    Each function is re-created over one copy of this module's globals in which every helper's
    name refers to its compiled version; the module itself is left unchanged.
    """
    env = dict(globals())
    for f in (_weigh, _weigh_rows, _bucket, _accumulate_all, _accumulate, _accumulate_positive,
              _sort_hits_general, _sort_hits, _select, _batch_top_k):
        env[f.__name__] = numba.njit(cache=cache, nogil=True)(types.FunctionType(f.__code__, env, f.__name__))
    return _Kernels(env[_weigh.__name__], env[_weigh_rows.__name__], env[_batch_top_k.__name__])


def _weigh(indptr: np.ndarray, postings: np.ndarray, tf: np.ndarray, idf: np.ndarray, norm: np.ndarray,
           factor: float, alive: np.ndarray, weights: np.ndarray, term_max: np.ndarray) -> None:
    """Fill ``weights`` as :meth:`BM25Index._posting_weights` computes them (same operations, same
    order, so the same bits; 0 for a dead document's posting) and ``term_max`` with each term's
    largest positive weight."""
    for r in range(len(indptr) - 1):
        term_idf, top = idf[r], 0.0
        for p in range(indptr[r], indptr[r + 1]):
            t, d = tf[p], postings[p]
            w = term_idf * t / (t + norm[d]) * factor if alive[d] else 0.0
            weights[p] = w
            top = max(top, w)
        term_max[r] = top


def _weigh_rows(rows: np.ndarray, indptr: np.ndarray, postings: np.ndarray, tf: np.ndarray, idf: np.ndarray,
                doc_len: np.ndarray, k1: float, b: float, avgdl: float, factor: float, alive: np.ndarray,
                weights: np.ndarray, term_max: np.ndarray) -> None:
    """:func:`_weigh` for the terms ``rows`` only (term ``rows[j]`` has idf ``idf[j]``), with each
    document's length norm computed as :meth:`BM25Index._norms` does (same operations, same bits)."""
    for j in range(len(rows)):
        r = rows[j]
        term_idf, top = idf[j], 0.0
        for p in range(indptr[r], indptr[r + 1]):
            t, d = tf[p], postings[p]
            w = 0.0
            if alive[d]:
                norm = k1 * (1.0 - b + b * float(doc_len[d]) / avgdl)
                w = term_idf * t / (t + norm) * factor
            weights[p] = w
            top = max(top, w)
        term_max[r] = top


_BUCKETS = 1024  # histogram buckets of the top-k floor
_CROWDED = 32  # more hits than this in one bucket: sort them by a general sort


def _batch_top_k(q_ptr: np.ndarray, q_rows: np.ndarray, indptr: np.ndarray, postings: np.ndarray,
                 weights: np.ndarray, term_max: np.ndarray, n_docs: int, k: int,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k positive scores of every query (numba-compiled; plain Python is far too slow).

    Query ``i`` has term rows ``q_rows[q_ptr[i]:q_ptr[i+1]]``; a document's score is the sum of its
    posting weights in that order (as ``np.bincount`` adds them, so the numpy path matches bit for bit).
    Returns flat (doc index, score) arrays, best first per query (ties by index), and per-query counts.
    """
    n_q = len(q_ptr) - 1
    acc = np.zeros(n_docs)
    seen = np.zeros(n_docs, dtype=np.int64)
    touched = np.empty(n_docs + 1, dtype=np.int64)
    all_docs = np.arange(n_docs)
    cand, vals = np.empty(n_docs, dtype=np.int64), np.empty(n_docs)
    hist = np.empty(_BUCKETS, dtype=np.int64)
    out_docs, out_scores = np.empty(n_q * k, dtype=np.int64), np.empty(n_q * k)
    counts = np.zeros(n_q, dtype=np.int64)
    pos = 0
    for i in range(n_q):
        rows = q_rows[q_ptr[i] : q_ptr[i + 1]]
        n_post, bound, positive = 0, 0.0, True
        for r in rows:
            n_post += indptr[r + 1] - indptr[r]
            bound += term_max[r]  # no score exceeds it (each weight <= its term's max; rounding is monotone)
            positive &= term_max[r] > 0.0  # a term's weights all have the sign of its idf
        if n_post < n_docs and positive:  # list the documents the postings touch, visit only those
            docs = touched[: _accumulate_positive(rows, indptr, postings, weights, acc, touched)]
        elif n_post < n_docs:
            docs = touched[: _accumulate(rows, indptr, postings, weights, acc, seen, touched)]
            seen[docs] = 0
        else:  # many postings: visit every document
            _accumulate_all(rows, indptr, postings, weights, acc)
            docs = all_docs
        c = _select(acc, docs, bound, k, hist, cand, vals, out_docs[pos : pos + k], out_scores[pos : pos + k])
        counts[i] = c
        pos += c
    return out_docs[:pos], out_scores[:pos], counts


def _accumulate_all(rows: np.ndarray, indptr: np.ndarray, postings: np.ndarray, weights: np.ndarray,
                    acc: np.ndarray) -> None:
    """``acc[doc] += weight`` over the postings of ``rows``, in order."""
    for r in rows:
        for p in range(indptr[r], indptr[r + 1]):
            acc[postings[p]] += weights[p]


def _accumulate(rows: np.ndarray, indptr: np.ndarray, postings: np.ndarray, weights: np.ndarray,
                acc: np.ndarray, seen: np.ndarray, touched: np.ndarray) -> int:
    """As :func:`_accumulate_all`, listing each touched document once in ``touched`` (branch-free:
    written always, kept only on first touch); returns their count."""
    m = 0
    for r in rows:
        for p in range(indptr[r], indptr[r + 1]):
            d = postings[p]
            touched[m] = d
            m += 1 - seen[d]
            seen[d] = 1
            acc[d] += weights[p]
    return m


def _accumulate_positive(rows: np.ndarray, indptr: np.ndarray, postings: np.ndarray, weights: np.ndarray,
                         acc: np.ndarray, touched: np.ndarray) -> int:
    """As :func:`_accumulate` when every weight is positive: a document is new while its sum is 0."""
    m = 0
    for r in rows:
        for p in range(indptr[r], indptr[r + 1]):
            d = postings[p]
            touched[m] = d
            m += acc[d] == 0.0
            acc[d] += weights[p]
    return m


def _bucket(v: float, scale: float) -> int:
    """Histogram bucket of a positive score; never decreases as ``v`` grows."""
    return min(int(v * scale), _BUCKETS - 1)


def _select(acc: np.ndarray, docs: np.ndarray, bound: float, k: int, hist: np.ndarray, cand: np.ndarray,
            vals: np.ndarray, out_docs: np.ndarray, out_vals: np.ndarray) -> int:
    """Write the k best positive scores of ``docs`` (visited in any order) to the outputs, best first,
    ties by index, zeroing their ``acc`` entries; returns how many.

    One pass keeps a histogram (over [0, bound]) of the scores kept so far and a floor bucket: the
    highest such that the kept scores in buckets >= floor number at least k. A score below the
    floor is skipped after one comparison with a value just under the floor's lower edge (a
    well-predicted branch once the floor has risen); since a score's bucket never decreases with
    the score, the kept scores at or above the final floor include the top k.
    """
    scale = (_BUCKETS - 1) / bound if bound > 0.0 else 0.0
    hist[:] = 0
    floor, above, m = 0, 0, 0
    low = 5e-324  # skip v < low: zero, negative, or (later) below the floor
    for d in docs:
        v = acc[d]
        acc[d] = 0.0
        if v >= low:
            b = _bucket(v, scale)
            if b >= floor:
                cand[m], vals[m] = d, v
                m += 1
                hist[b] += 1
                above += 1
                if above - hist[floor] >= k:
                    while above - hist[floor] >= k:
                        above -= hist[floor]
                        floor += 1
                    low = floor / scale * (1.0 - 1e-9)  # v * scale rounds by far less than this margin
    return _sort_hits(cand[:m], vals[:m], scale, floor, hist, k, out_docs, out_vals)


def _sort_hits(cand: np.ndarray, vals: np.ndarray, scale: float, floor: int, hist: np.ndarray, k: int,
               out_docs: np.ndarray, out_vals: np.ndarray) -> int:
    """Write the best min(k, n) of the n kept hits at or above the floor bucket to the outputs, best
    first, ties by index; return how many.

    A counting sort by bucket (``hist`` counts them), highest first, then an insertion sort that only
    moves hits within their bucket (a handful each).
    """
    start = np.empty(len(hist), dtype=np.int64)
    n, crowded = 0, 0
    for b in range(len(hist) - 1, floor - 1, -1):
        start[b] = n
        n += hist[b]
        crowded = max(crowded, hist[b])
    if crowded > _CROWDED:  # an insertion sort within so full a bucket could be quadratic
        return _sort_hits_general(cand, vals, scale, floor, k, out_docs, out_vals)
    docs, scores = np.empty(n, dtype=np.int64), np.empty(n)
    for j in range(len(vals)):
        b = _bucket(vals[j], scale)
        if b >= floor:
            docs[start[b]], scores[start[b]] = cand[j], vals[j]
            start[b] += 1
    for j in range(1, n):
        d, v = docs[j], scores[j]
        i = j - 1
        while i >= 0 and (scores[i] < v or (scores[i] == v and docs[i] > d)):
            docs[i + 1], scores[i + 1] = docs[i], scores[i]
            i -= 1
        docs[i + 1], scores[i + 1] = d, v
    c = min(k, n)
    out_docs[:c], out_vals[:c] = docs[:c], scores[:c]
    return c


def _sort_hits_general(cand: np.ndarray, vals: np.ndarray, scale: float, floor: int, k: int,
                       out_docs: np.ndarray, out_vals: np.ndarray) -> int:
    """As :func:`_sort_hits`, with a sort by score and then by index among equal scores."""
    n = 0
    for j in range(len(vals)):  # keep the hits at or above the floor (in place)
        cand[n], vals[n] = cand[j], vals[j]
        n += _bucket(vals[j], scale) >= floor
    cand, vals = cand[:n], vals[:n]
    order = np.argsort(vals)  # ascending: read from the end
    c = min(k, n)
    j = 0
    while j < c:
        v = vals[order[n - 1 - j]]
        e = j + 1
        while e < n and vals[order[n - 1 - e]] == v:
            e += 1
        if e - j == 1:
            out_docs[j], out_vals[j] = cand[order[n - 1 - j]], v
        else:  # equal scores: by index
            run = np.sort(cand[order[n - e : n - j]])
            for t in range(min(e, c) - j):
                out_docs[j + t], out_vals[j + t] = run[t], v
        j = e
    return c


def _lethe_version() -> str:
    from lethe import __version__

    return __version__
