"""Deletion against rebuilding at scale: BM25, FAISS flat / IVF and Milvus Lite at 10k to 1M documents (#23).

The corpus is synthetic, so that 1M documents need no download and every size has the same shape:

* **BM25**: documents of pseudo-words drawn from a Zipfian vocabulary (100,000 words, exponent 1.07, the
  rank-frequency law of English text) with log-normal lengths (median 45 words, clipped to 5..400: MS MARCO
  passage-like); queries of 2-6 words drawn from the same law.
* **Dense**: random unit vectors (dim 384, MiniLM's), queries likewise; the cost of an index does not depend
  on what the vectors mean.

Per size N and backend, one child process (so that peak memory is the backend's own): build, query throughput
(``qps``, the best of 3 rounds of ``--queries`` queries, k = 10), ``delete_one_ms`` (median of 5 single-document
deletes, each until the index answers again: BM25's delete + one single-query search, which
re-weights the terms it touches; ``query_one_ms`` is that search alone, before any delete, and
``delete_one_reweigh_all_ms`` a delete followed by the re-weighting of every term, the most the
queries after a delete can have to redo), ``delete_1000_ms`` (1,000
documents at once), ``rebuild_ms`` (a fresh build over the documents left) and ``equals_rebuild`` (the deleted
index's fingerprint equals the rebuild's: what ``lethe forget`` verifies). ``peak_mb`` is the growth of resident
memory during the build (sampled every 5 ms) over the resident memory once the corpus is generated.

FAISS IVF deletion is exact only after re-training the centroids (the deleted vectors trained them): its
``delete_one_ms`` is the removal, ``delete_one_exact_ms`` removal plus re-training, and ``equals_rebuild`` is
checked after re-training. Milvus Lite: ``delete_one_ms`` is delete + flush + compact + the by-id check lethe
runs, ``delete_verify_one_ms`` adds the own-vector search check, ``save_after_delete_ms`` the rewrite that
leaves no deleted byte in Lite's files (see docs/architecture.md). Milvus Lite stops at ``--milvus-max``.

Last line: one JSON object keyed by N (``"10000"``, ...), each holding ``bm25``, ``faiss_flat``, ``faiss_ivf``
and ``milvus_lite`` objects.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("bm25", "faiss_flat", "faiss_ivf", "milvus_lite")
VOCAB = 100_000
ZIPF_S = 1.07
DIM = 384
IVF_NLIST = 1024


# -- the synthetic collection ------------------------------------------------------------------------

def vocabulary(rng: np.random.Generator) -> list[str]:
    """``VOCAB`` distinct pseudo-words of 4-10 letters (no stemmer merges two of them into one form
    often enough to matter; the analyzer sees ordinary lowercase words)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < VOCAB:
        lengths = rng.integers(4, 11, size=VOCAB)
        for n in lengths:
            words.add("".join(rng.choice(letters, size=n)))
            if len(words) >= VOCAB:
                break
    return sorted(words)


def zipf_ranks(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` word ranks drawn from a Zipf law truncated to the vocabulary."""
    p = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF_S
    return rng.choice(VOCAB, size=size, p=p / p.sum())


def documents(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """``n`` (id, text) documents and 1,000 query texts of the synthetic collection."""
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(rng), dtype=object)
    lengths = np.clip(np.rint(rng.lognormal(np.log(45), 0.6, size=n)), 5, 400).astype(np.int64)
    tokens = words[zipf_ranks(rng, int(lengths.sum()))]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    texts = [" ".join(tokens[bounds[i]:bounds[i + 1]]) for i in range(n)]
    q_len = rng.integers(2, 7, size=1000)
    q_tokens = words[zipf_ranks(rng, int(q_len.sum()))]
    q_bounds = np.concatenate([[0], np.cumsum(q_len)])
    queries = [" ".join(q_tokens[q_bounds[i]:q_bounds[i + 1]]) for i in range(1000)]
    return [f"doc{i}" for i in range(n)], texts, queries


def unit_vectors(n: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors of dimension ``DIM`` (float32)."""
    v = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


# -- measuring ---------------------------------------------------------------------------------------

def rss_mb() -> float:
    """Resident memory of this process, MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Samples resident memory every 5 ms while the ``with`` block runs; ``peak`` is the largest sample."""

    def __enter__(self) -> PeakRss:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def ms(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in milliseconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def qps(search: Callable[[], Any], n_queries: int, rounds: int = 3) -> float:
    """Queries per second of ``search`` (which runs ``n_queries`` queries), best of ``rounds``."""
    best = min(ms(search)[1] for _ in range(rounds))
    return round(n_queries / (best / 1000), 1)


def build_measured(build: Callable[[], Any]) -> tuple[Any, float, float]:
    """The built index, its build milliseconds and its peak resident-memory growth (MB)."""
    base = rss_mb()
    with PeakRss() as peak:
        index, build_ms = ms(build)
    return index, build_ms, peak.peak - base


def delete_series(index: Any, victims: list[str], after: Callable[[Any], Any]) -> float:
    """Median milliseconds of deleting each of ``victims`` alone, each followed by ``after(index)``."""
    times = [ms(lambda d=d: (index.delete([d]), after(index)))[1] for d in victims]
    return round(statistics.median(times), 3)


# -- the backends (each runs in its own child process) --------------------------------------------------

def run_bm25(n: int, seed: int, n_queries: int) -> dict[str, Any]:
    from lethe.retrieval.bm25 import BM25Index
    from lethe.types import Doc

    ids, texts, queries = documents(n, seed)
    docs = [Doc(i, t) for i, t in zip(ids, texts)]
    del texts

    def build(keep: list[Doc]) -> BM25Index:
        ix = BM25Index()
        ix.add(keep)
        prepare(ix)
        return ix

    def prepare(ix: BM25Index) -> None:
        getattr(ix, "prepare", lambda: None)()

    index, build_ms, peak = build_measured(lambda: build(docs))
    qs = queries[:n_queries]
    out = {"build_s": round(build_ms / 1000, 2), "peak_mb": round(peak, 1),
           "qps": qps(lambda: index.search(qs, 10), len(qs))}
    rng = random.Random(seed)
    victims = rng.sample(ids, 1010)
    out["query_one_ms"] = round(statistics.median(ms(lambda: index.search(qs[:1], 10))[1] for _ in range(5)), 3)
    out["delete_one_ms"] = delete_series(index, victims[:5], lambda ix: ix.search(qs[:1], 10))
    out["delete_one_reweigh_all_ms"] = delete_series(index, victims[5:10], prepare)
    out["delete_1000_ms"] = round(ms(lambda: (index.delete(victims[10:]), prepare(index)))[1], 3)
    gone = set(victims)
    rebuilt, rebuild_ms = ms(lambda: build([d for d in docs if d.id not in gone]))
    out["rebuild_ms"] = round(rebuild_ms, 1)
    out["rebuild_over_delete_one"] = round(rebuild_ms / out["delete_one_ms"], 1)
    out["equals_rebuild"] = index.fingerprint() == rebuilt.fingerprint()
    return out


def run_faiss(n: int, seed: int, n_queries: int, kind: str) -> dict[str, Any]:
    from lethe.retrieval.dense import DenseIndex

    ids = [f"doc{i}" for i in range(n)]
    vecs = unit_vectors(n, seed)
    qvecs = unit_vectors(n_queries, seed + 1)
    nlist = min(IVF_NLIST, max(1, n // 39)) if kind == "ivf" else None

    def build(keep_ids: list[str], keep_vecs: np.ndarray) -> DenseIndex:
        ix = DenseIndex(DIM, kind=kind, nlist=nlist)
        ix.add_vectors(keep_ids, keep_vecs)
        return ix

    index, build_ms, peak = build_measured(lambda: build(ids, vecs))
    out = {"build_s": round(build_ms / 1000, 2), "peak_mb": round(peak, 1),
           "qps": qps(lambda: index.search_vectors(qvecs, 10), n_queries)}
    rng = random.Random(seed)
    victims = rng.sample(ids, 1010)
    out["delete_one_ms"] = delete_series(index, victims[:5], lambda ix: None)
    if kind == "ivf":
        out["delete_one_exact_ms"] = round(ms(lambda: (index.delete([victims[5]]), index.retrain()))[1], 1)
        out["delete_1000_ms"] = round(ms(lambda: index.delete(victims[6:]))[1], 3)
        index.retrain()
    else:
        out["delete_1000_ms"] = round(ms(lambda: index.delete(victims[5:]))[1], 3)
    gone = set(victims)
    keep = [i for i, d in enumerate(ids) if d not in gone]
    rebuilt, rebuild_ms = ms(lambda: build([ids[i] for i in keep], vecs[keep]))
    out["rebuild_ms"] = round(rebuild_ms, 1)
    out["rebuild_over_delete_one"] = round(rebuild_ms / out["delete_one_ms"], 1)
    out["equals_rebuild"] = index.fingerprint() == rebuilt.fingerprint()
    return out


def run_milvus(n: int, seed: int, n_queries: int) -> dict[str, Any]:
    from lethe.retrieval.dense import DenseIndex
    from lethe.retrieval.milvus import MilvusIndex

    ids = [f"doc{i}" for i in range(n)]
    vecs = unit_vectors(n, seed)
    qvecs = unit_vectors(n_queries, seed + 1)
    with tempfile.TemporaryDirectory(prefix="lethe-scale-milvus-") as tmp:
        def build() -> MilvusIndex:
            ix = MilvusIndex(DIM, uri=str(Path(tmp) / "scale.milvus.db"), collection="scale")
            for start in range(0, n, 10_000):
                ix.add_vectors(ids[start:start + 10_000], vecs[start:start + 10_000])
            return ix

        index, build_ms, peak = build_measured(build)
        out = {"build_s": round(build_ms / 1000, 2), "peak_mb": round(peak, 1),
               "qps": qps(lambda: index.search_vectors(qvecs, 10), n_queries)}
        rng = random.Random(seed)
        victims = rng.sample(ids, 1006)
        out["delete_one_ms"] = delete_series(index, victims[:5], lambda ix: None)

        def delete_and_check(d: str) -> bool:
            index.delete([d])
            hits = index.search_vectors(vecs[int(d[3:])][None, :], 10)[0]
            return d not in index and all(h.doc_id != d for h in hits)

        gone_ok, verify_ms = ms(lambda: delete_and_check(victims[5]))
        out["delete_verify_one_ms"] = round(verify_ms, 3)
        out["delete_1000_ms"] = round(ms(lambda: index.delete(victims[6:]))[1], 3)
        _, save_ms = ms(lambda: index.save(Path(tmp) / "scale.npz"))
        out["save_after_delete_ms"] = round(save_ms, 1)
        gone = set(victims)
        keep = [i for i, d in enumerate(ids) if d not in gone]

        def rebuild() -> DenseIndex:  # what Milvus's fingerprint equals: a FAISS flat index of the same rows
            ix = DenseIndex(DIM, kind="flat")
            ix.add_vectors([ids[i] for i in keep], vecs[keep])
            return ix

        rebuilt, rebuild_ms = ms(rebuild)
        out["rebuild_ms"] = round(rebuild_ms, 1)
        out["rebuild_note"] = "FAISS flat over the rows left (a Milvus re-insert is build_s)"
        out["equals_rebuild"] = bool(gone_ok) and index.fingerprint() == rebuilt.fingerprint()
        index.close()
    return out


def run_child(backend: str, n: int, seed: int, n_queries: int) -> dict[str, Any]:
    """One backend at one size, in this process."""
    if backend == "bm25":
        return run_bm25(n, seed, n_queries)
    if backend == "milvus_lite":
        return run_milvus(n, seed, n_queries)
    return run_faiss(n, seed, n_queries, backend.removeprefix("faiss_"))


def in_child(backend: str, n: int, seed: int, n_queries: int) -> dict[str, Any]:
    """Run one backend at one size in a fresh process; its JSON line, or the error it ended with."""
    cmd = [sys.executable, __file__, "--child", backend, "--docs", str(n), "--seed", str(seed),
           "--queries", str(n_queries)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(f"  {backend} at {n}: {time.perf_counter() - t0:.0f} s, rc {proc.returncode}", file=sys.stderr)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300], "rc": proc.returncode}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--queries", type=int, default=200, help="queries per throughput round")
    ap.add_argument("--milvus-max", type=int, default=100_000, help="largest N run on Milvus Lite")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.docs[0], args.seed, args.queries)))
        return
    results: dict[str, dict[str, Any]] = {}
    for n in args.docs:
        row: dict[str, Any] = {}
        for backend in args.backends:
            if backend == "milvus_lite" and n > args.milvus_max:
                row[backend] = {"skipped": f"N > --milvus-max {args.milvus_max} (Milvus Lite runs in-process; "
                                           "use a Milvus server beyond that)"}
                continue
            row[backend] = in_child(backend, n, args.seed, args.queries)
        results[str(n)] = row
        print(json.dumps({str(n): row}), file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
