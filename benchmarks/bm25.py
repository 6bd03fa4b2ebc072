"""BM25 benchmark: lethe vs bm25s vs rank_bm25 on one collection, in one run.

Prints one JSON object as its last line: ndcg10_lethe, ndcg10_bm25s, qps_lethe, qps_bm25s,
qps_rank_bm25, delete_ms (one document, median), rebuild_ms (whole index), with ratios.
"""

from __future__ import annotations

import argparse
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
    t0 = time.perf_counter()
    out = fn(*args)
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
    index.search_tokens(q_tokens[0], args.k)  # weights computed once (lazily, after each change)
    hits, lethe_s = _best_of(args.repeats, lambda: [index.search_tokens(t, args.k) for t in q_tokens])
    ndcg_lethe = evaluate(hits_to_run(qids, hits), qrels, ["nDCG@10"])[0]["nDCG@10"]

    # bm25s on identical tokens
    import bm25s

    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(doc_tokens, show_progress=False)
    vocab = {t: i for t, i in ref.vocab_dict.items() if t}
    mapped = [[vocab[t] for t in toks if t in vocab] for toks in q_tokens]
    usable = [i for i, m in enumerate(mapped) if m]  # bm25s cannot take a query with no known term
    q_ids_ref = [mapped[i] for i in usable]
    ref.retrieve(q_ids_ref[:2], k=args.k, show_progress=False)  # warm-up
    (res, res_scores), bm25s_s = _best_of(
        args.repeats, lambda: ref.retrieve(q_ids_ref, k=args.k, show_progress=False, n_threads=1))
    run_ref = {qids[i]: {docs[int(j)].id: float(s) for j, s in zip(res[r], res_scores[r]) if s > 0}
               for r, i in enumerate(usable)}
    ndcg_bm25s = evaluate(run_ref, qrels, ["nDCG@10"])[0]["nDCG@10"]

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
        "qps_lethe": round(len(qids) / lethe_s, 1), "qps_bm25s": round(len(usable) / bm25s_s, 1),
        "qps_rank_bm25": round(len(sample) / rb_s, 1),
        "delete_ms": round(delete_ms, 3), "rebuild_ms": round(rebuild_s * 1000, 1),
    }
    out["qps_ratio_lethe_bm25s"] = round(out["qps_lethe"] / out["qps_bm25s"], 2)
    out["rebuild_over_delete"] = round(out["rebuild_ms"] / out["delete_ms"], 1)
    print(json.dumps(out))


def _delete_times(index: BM25Index, victims: list[str], probe: list[str]) -> list[float]:
    """Time delete + the first query after it (which pays the lazy re-weighting)."""
    out = []
    for v in victims:
        ix = index.copy()
        t0 = time.perf_counter()
        ix.delete([v])
        ix._query_state()
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()
