"""BM25 benchmark: lethe vs bm25s (numpy and numba backends) vs rank_bm25 on one collection, in one run.

Prints one JSON object as its last line: ndcg10_lethe, ndcg10_bm25s, qps_lethe (``Hit`` lists,
default backend: numba when installed), qps_lethe_arrays (the same results as arrays of document
indices and scores, as bm25s returns them), qps_lethe_numpy (lethe without numba), qps_bm25s (its
default numpy backend), qps_bm25s_numba, qps_rank_bm25, delete_ms (one document + the first query
after it, which re-weights the terms it touches; median), rebuild_ms (whole index), with ratios.
Every system is timed on the same pre-tokenised queries as one batch, single-threaded, fastest of
``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time

import numpy as np

from lethe.data import load_dataset
from lethe.pipelines.evaluate import evaluate, hits_to_run
from lethe.retrieval.analysis import Analyzer
from lethe.retrieval.bm25 import BM25Index


def _timed(fn, *args):  # noqa: ANN001, ANN202
    """Run ``fn``; its output and seconds, including a young-generation garbage collection at the end
    (so objects a system leaves for the collector, such as lethe's ``Hit`` tuples, are paid for here)."""
    t0 = time.perf_counter()
    out = fn(*args)
    gc.collect(0)
    return out, time.perf_counter() - t0


def _best_of(repeats: int, fn):  # noqa: ANN001, ANN202
    """Run ``fn`` ``repeats`` times; the output of the last run and the fastest time."""
    best = float("inf")
    for _ in range(repeats):
        out, dt = _timed(fn)
        best = min(best, dt)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--deletes", type=int, default=21, help="single-document deletes to time")
    ap.add_argument("--rank-bm25-queries", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=7, help="query-timing rounds (fastest kept, both systems)")
    args = ap.parse_args()

    ds = load_dataset(args.data)
    qrels = ds.split_qrels(args.split)
    qids = list(qrels)
    qtexts = [ds.queries[q].text for q in qids]
    docs = list(ds.corpus.values())
    analyzer = Analyzer()
    doc_tokens = [analyzer(d.contents) for d in docs]
    q_tokens = [analyzer(t) for t in qtexts]

    # lethe: full build (tokenise + index) is the rebuild cost a delete avoids
    def build() -> BM25Index:
        ix = BM25Index()
        ix.add(docs)
        return ix

    index, rebuild_s = _timed(build)
    index.search_tokens_batch(q_tokens, args.k)  # warm-up: weights computed, numba loaded (compiled once)
    hits, lethe_s = _best_of(args.repeats, lambda: index.search_tokens_batch(q_tokens, args.k))
    ndcg_lethe = evaluate(hits_to_run(qids, hits), qrels, ["nDCG@10"])[0]["nDCG@10"]
    _, arrays_s = _best_of(args.repeats, lambda: index.top_k_tokens_batch(q_tokens, args.k))
    plain = index.copy()
    plain.backend = "numpy"
    hits_np, lethe_np_s = _best_of(args.repeats, lambda: plain.search_tokens_batch(q_tokens, args.k))
    if hits_np != hits:
        raise SystemExit("lethe's numpy and numba backends disagree")

    # bm25s on identical tokens, both backends
    (ndcg_bm25s, n_usable, bm25s_s), (ndcg_numba, _, numba_s) = (
        _bm25s_run(backend, doc_tokens, q_tokens, docs, qids, qrels, args) for backend in ("numpy", "numba"))
    if round(ndcg_numba, 4) != round(ndcg_bm25s, 4):
        raise SystemExit(f"bm25s backends disagree: nDCG@10 {ndcg_bm25s:.4f} vs {ndcg_numba:.4f}")

    # rank_bm25 on a subsample of queries (it scores every document in Python)
    from rank_bm25 import BM25Okapi

    rb = BM25Okapi(doc_tokens)
    sample = q_tokens[: args.rank_bm25_queries]
    _, rb_s = _timed(lambda: [np.argsort(-rb.get_scores(t))[: args.k] for t in sample])

    # single-document deletes on copies, median
    rng = random.Random(0)
    victims = rng.sample([d.id for d in docs], args.deletes)
    delete_ms = statistics.median(_delete_times(index, victims, q_tokens[0])) * 1000

    out = {
        "data": args.data, "n_docs": len(docs), "n_queries": len(qids),
        "ndcg10_lethe": round(ndcg_lethe, 4), "ndcg10_bm25s": round(ndcg_bm25s, 4),
        "qps_lethe": round(len(qids) / lethe_s, 1), "qps_lethe_numpy": round(len(qids) / lethe_np_s, 1),
        "qps_lethe_arrays": round(len(qids) / arrays_s, 1),
        "qps_bm25s": round(n_usable / bm25s_s, 1), "qps_bm25s_numba": round(n_usable / numba_s, 1),
        "qps_rank_bm25": round(len(sample) / rb_s, 1),
        "delete_ms": round(delete_ms, 3), "rebuild_ms": round(rebuild_s * 1000, 1),
    }
    out["qps_ratio_lethe_bm25s"] = round(out["qps_lethe"] / out["qps_bm25s"], 2)
    out["ratio_qps_vs_bm25s"] = out["qps_ratio_lethe_bm25s"]
    out["ratio_qps_vs_bm25s_numba"] = round(out["qps_lethe"] / out["qps_bm25s_numba"], 2)
    out["ratio_arrays_vs_bm25s_numba"] = round(out["qps_lethe_arrays"] / out["qps_bm25s_numba"], 2)
    out["rebuild_over_delete"] = round(out["rebuild_ms"] / out["delete_ms"], 1)
    print(json.dumps(out))


def _bm25s_run(backend: str, doc_tokens: list[list[str]], q_tokens: list[list[str]], docs: list,
               qids: list[str], qrels: dict, args: argparse.Namespace) -> tuple[float, int, float]:
    """Index and time bm25s with one backend: (nDCG@10, queries it can take, fastest batch seconds)."""
    import bm25s

    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75, backend=backend)
    ref.index(doc_tokens, show_progress=False)
    vocab = {t: i for t, i in ref.vocab_dict.items() if t}
    mapped = [[vocab[t] for t in toks if t in vocab] for toks in q_tokens]
    usable = [i for i, m in enumerate(mapped) if m]  # bm25s cannot take a query with no known term
    q_ids_ref = [mapped[i] for i in usable]
    ref.retrieve(q_ids_ref[:2], k=args.k, show_progress=False, n_threads=1)  # warm-up (numba: compile)
    (res, res_scores), secs = _best_of(
        args.repeats, lambda: ref.retrieve(q_ids_ref, k=args.k, show_progress=False, n_threads=1))
    run_ref = {qids[i]: {docs[int(j)].id: float(s) for j, s in zip(res[r], res_scores[r]) if s > 0}
               for r, i in enumerate(usable)}
    return evaluate(run_ref, qrels, ["nDCG@10"])[0]["nDCG@10"], len(usable), secs


def _delete_times(index: BM25Index, victims: list[str], probe: list[str]) -> list[float]:
    """Time delete + the first query after it (which re-weights the terms it touches, lazily)."""
    out = []
    for v in victims:
        ix = index.copy()
        ix.prepare()  # weights current before the delete (a copy starts without them)
        t0 = time.perf_counter()
        ix.delete([v])
        ix.search_tokens(probe, 10)
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()
