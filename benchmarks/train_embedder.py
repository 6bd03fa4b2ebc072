"""Train a teacher and two students (DSE, LG-ANNA) on a train split; evaluate on the test split.

Prints one JSON object as its last line with ndcg10_base, ndcg10_teacher_rerank (BM25 top-k
re-ranked by the cross-encoder teacher), ndcg10_teacher_fusion (the distillation teacher: fusion of
cross-encoder, BM25 and dense), ndcg10_dse, ndcg10_lganna, ndcg10_hybrid_best (BM25 + best student,
RRF or convex) and the training wall times. Collections without a train split (Stack Exchange) get a
seeded query split holding out ``--holdout`` of the questions for testing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from lethe.data import Dataset, load_dataset
from lethe.embedding.train import EmbedTrainConfig
from lethe.errors import RegistryError
from lethe.pipelines.evaluate import evaluate, evaluate_retriever
from lethe.pipelines.train import (
    model_eval,
    progress_bar,
    score_pools,
    train_embedder,
    train_teacher,
    training_data,
)
from lethe.pipelines.workspace import Workspace
from lethe.ranking import CETrainConfig
from lethe.registry import ArtifactRef
from lethe.retrieval.fusion import FusionRetriever

INSTRUCTIONS = {
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    # chosen on 400 NFCorpus *train* queries with the base MiniLM (instruction left out of pooling):
    # nDCG@10 0.333, vs 0.325 for the generic "Given a question, retrieve relevant documents that best
    # answer the question" (0.345 with no instruction: a model not trained with instructions pays for them)
    "nfcorpus": "Find medical research on the topic",
}
DEFAULT_INSTRUCTION = "Given a question, retrieve answers that best answer the question"


def with_split(ds: Dataset, holdout: float, seed: int = 0) -> Dataset:
    """Add train/test splits by holding out a fraction of the test queries (when no train split)."""
    if "train" in ds.qrels:
        return ds
    qids = sorted(ds.qrels["test"])
    random.Random(seed).shuffle(qids)
    n_test = int(round(len(qids) * holdout))
    test, train = set(qids[:n_test]), set(qids[n_test:])
    ds.qrels = {"train": {q: ds.qrels["test"][q] for q in train}, "test": {q: ds.qrels["test"][q] for q in test}}
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--home", default=None, help="workspace (default: a temp dir)")
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--teacher-minutes", type=float, default=15)
    ap.add_argument("--student-minutes", type=float, default=20)
    ap.add_argument("--teacher-epochs", type=float, default=1.0)
    ap.add_argument("--student-epochs", type=float, default=1.0)
    ap.add_argument("--fusion", default="ce=0.2,bm25=0.4,dense=0.4")
    ap.add_argument("--rerank-depth", type=int, default=100)
    ap.add_argument("--rerank-queries", type=int, default=0, help="0: all test queries")
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--student-batch", type=int, default=16,
                    help="queries per student step (each with a positive and --negatives negatives)")
    ap.add_argument("--pool-depth", type=int, default=20)
    ap.add_argument("--train-queries", type=int, default=0,
                    help="train on a seeded sample of N train queries (0: all); scoring pools costs time per query")
    ap.add_argument("--student-lr", type=float, default=3e-5)
    ap.add_argument("--retrain", default="",
                    help="comma-separated recipes to train again (a new version) in a reused --home")
    args = ap.parse_args()
    retrain = {r for r in args.retrain.split(",") if r}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fusion = {k: float(v) for k, v in (p.split("=") for p in args.fusion.split(","))}

    ds = with_split(load_dataset(args.data), args.holdout)
    home = Path(args.home or tempfile.mkdtemp(prefix="lethe-train-"))
    out: dict = {"data": args.data, "train_queries": len(ds.qrels["train"]), "test_queries": len(ds.qrels["test"])}
    t_all = time.perf_counter()
    with Workspace(home) as ws:
        if not ws.indexes():
            ws.ingest(ds)
            ws.build_bm25()
            ws.build_dense()
        test_q = {q: ds.queries[q].text for q in ds.qrels["test"]}
        test_qrels = ds.qrels["test"]
        out["ndcg10_bm25"] = evaluate_retriever(ws.load_index("bm25"), test_q, test_qrels, ["nDCG@10"])[0]["nDCG@10"]
        out["ndcg10_base"] = model_eval(ws, ds, "minilm", "test")["nDCG@10"]
        train_q = sorted(ds.qrels["train"])
        if args.train_queries:
            train_q = random.Random(0).sample(train_q, min(args.train_queries, len(train_q)))
        out["train_queries_used"] = len(train_q)
        td = training_data(ws, ds, "train", train_q, pool_depth=args.pool_depth)

        reused: list[str] = []
        teacher = _existing(ws, "teacher")
        if teacher is None:
            cfg = CETrainConfig(epochs=args.teacher_epochs, lr=7e-5, max_length=128, queries_per_step=8,
                                max_seconds=args.teacher_minutes * 60)
            on_step, close = progress_bar("teacher")
            t0 = time.perf_counter()
            teacher, losses = train_teacher(ws, td, "teacher", "minilm", cfg, n_negatives=3, on_step=on_step)
            close()
            out["train_s_teacher"] = round(time.perf_counter() - t0, 1)
        else:
            reused.append(str(teacher))
        rq = list(test_qrels)
        if args.rerank_queries:
            rq = random.Random(0).sample(rq, min(args.rerank_queries, len(rq)))
        out["rerank_queries"] = len(rq)
        out.update(teacher_figures(ws, ds, str(teacher), fusion, rq, args.rerank_depth))
        cache = _existing(ws, "teacher-scores")
        if cache is None:
            cache, _ = score_pools(ws, td, str(teacher), fusion=fusion)
        else:
            reused.append(str(cache))

        instruction = INSTRUCTIONS.get(ds.name, DEFAULT_INSTRUCTION)
        for recipe in ("dse", "lganna"):
            scfg = EmbedTrainConfig(recipe=recipe, epochs=args.student_epochs, lr=args.student_lr,
                                    batch_size=args.student_batch,
                                    max_length=256, max_seconds=args.student_minutes * 60,
                                    instruction=instruction if recipe == "lganna" else None)
            ref = None if recipe in retrain else _existing(ws, f"{recipe}-{ds.name}")
            if ref is None:
                on_step, close = progress_bar(recipe)
                ref, result, mined = train_embedder(ws, td, str(cache), scfg, f"{recipe}-{ds.name}", "minilm",
                                                    args.negatives, 0.95, on_step=on_step)
                close()
                out[f"train_s_{recipe}"] = round(result.seconds, 1)
                out[f"examples_{recipe}"] = len(mined)
                out[f"batch_{recipe}"], out[f"lr_{recipe}"] = args.student_batch, args.student_lr
            else:  # figures of the earlier run, from the model's manifest
                reused.append(str(ref))
                extra = ref.manifest.get("extra", {})
                out[f"batch_{recipe}"] = extra.get("train", {}).get("batch_size")
                out[f"lr_{recipe}"] = extra.get("train", {}).get("lr")
                out[f"train_s_{recipe}"], out[f"examples_{recipe}"] = extra.get("seconds"), extra.get("examples")
            out[f"ndcg10_{recipe}"] = model_eval(ws, ds, str(ref), "test")["nDCG@10"]
            out[f"model_{recipe}"] = str(ref)
        best = max(("dse", "lganna"), key=lambda r: out[f"ndcg10_{r}"])
        student_index = ws.load_index(ws.model_index(out[f"model_{best}"]).name)
        hybrid = {}
        for method, weights in (("rrf", None), ("convex", [0.5, 0.5]), ("convex", [0.3, 0.7])):
            fr = FusionRetriever([ws.load_index("bm25"), student_index], method=method, weights=weights)
            key = method if weights is None else f"{method}{weights[0]}"
            hybrid[key] = evaluate_retriever(fr, test_q, test_qrels, ["nDCG@10"])[0]["nDCG@10"]
        out["hybrid"] = hybrid
        out["ndcg10_hybrid_best"] = max(hybrid.values())
        out["hybrid_best_student"] = best
        out["reused"] = reused
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    rounded = {k: round(v, 4) if isinstance(v, float) and not k.startswith("lr_") else v for k, v in out.items()}
    print(json.dumps(rounded))


def teacher_figures(ws: Workspace, ds: Dataset, teacher: str, fusion: dict, qids: list[str],
                    depth: int) -> dict:
    """The teacher's rerank figures, measured once per (teacher, fusion, queries, depth) in a reused home."""
    key = json.dumps([teacher, fusion, sorted(qids), depth])
    path = ws.home / "bench-teacher-figures.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    if key not in known:
        t0 = time.perf_counter()
        ce_only, fused = teacher_rerank_eval(ws, ds, teacher, fusion, qids, depth)
        known[key] = {"ndcg10_teacher_rerank": ce_only, "ndcg10_teacher_fusion": fused,
                      "rerank_s_per_query": round((time.perf_counter() - t0) / len(qids), 2)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(path)
    return known[key]


def _existing(ws: Workspace, name: str) -> ArtifactRef | None:
    """The active ``name`` in a reused ``--home`` (a run killed part-way resumes after its last model)."""
    try:
        ref = ws.registry.get(name)
    except RegistryError:
        return None
    return ref if ref.active else None


def teacher_rerank_eval(ws: Workspace, ds: Dataset, teacher: str, fusion: dict, qids: list[str],
                        depth: int) -> tuple[float, float]:
    """nDCG@10 of BM25 top-``depth`` re-ranked by the cross-encoder alone and by the fusion teacher."""
    from lethe.pipelines.train import TrainingData, fuse_teacher, teacher_reranker
    from lethe.training.pools import TeacherScores

    rr = teacher_reranker(ws, teacher)
    hits = ws.load_index("bm25").search([ds.queries[q].text for q in qids], depth)
    pools = {q: [h.doc_id for h in hs] for q, hs in zip(qids, hits)}
    texts = {d.id: d.contents for d in ws.store.get_many({d for p in pools.values() for d in p})}
    queries = {q: ds.queries[q].text for q in qids}
    data = TrainingData(queries, {q: {} for q in qids}, texts, pools, {})
    ce = TeacherScores.compute(pools, {}, queries, texts, rr.score_pairs)
    fused = fuse_teacher(ws, data, ce, fusion)
    qrels = {q: ds.qrels["test"][q] for q in qids}
    return (evaluate(ce.scores, qrels, ["nDCG@10"])[0]["nDCG@10"],
            evaluate(fused.scores, qrels, ["nDCG@10"])[0]["nDCG@10"])


if __name__ == "__main__":
    main()
