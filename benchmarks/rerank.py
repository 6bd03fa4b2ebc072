"""Rerank a first stage with a cross-encoder, LLM query likelihood and listwise LLM (full / sliding /
first token), zero-shot and after listwise training; one JSON object as the last line.

Each system key (``first_stage``, ``cross_encoder``, ``qlm``, ``full``, ``sliding``, ``first_token``,
``full_trained``, ``sliding_trained``) holds ``ndcg10``, ``delta_ci`` (paired-bootstrap 95% interval of
its nDCG@10 minus the first stage's, over the same queries), ``ndcg10_fused`` (RRF with the first stage),
``calls_per_query``, ``input_tokens_per_query``, ``output_tokens_per_query`` and ``seconds_per_query``
over a fixed-seed sample of ``--queries`` test queries.

On a collection with a train split (SciFact) the cross-encoder and the two listwise rerankers are trained
here (time-capped) and registered in ``--home``; on one without (TREC DL19 subset) pass the SciFact
run's ``--home`` and the trained models are applied as they are (transfer). Listwise labels: the
judged-relevant candidates first, the rest by the teacher (``--teacher fusion``: RRF of the first stage
and the pretrained dense MiniLM, so that every position of the label asks for relevance; ``bm25``: the
first-stage order, which makes most of each label a copy of the input).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from lethe.data import Dataset, load_dataset
from lethe.data.loaders import load_trec_run
from lethe.errors import RegistryError
from lethe.pipelines.doc2query import with_doc2query
from lethe.pipelines.evaluate import delta_ci, evaluate
from lethe.pipelines.rerank import DEFAULT_LLM, ensure_llm, listwise_examples, load_reranker, train_listwise_reranker
from lethe.pipelines.train import TrainingData, load_scores, progress_bar, score_pools, train_teacher, training_data
from lethe.pipelines.workspace import Workspace
from lethe.ranking import CETrainConfig
from lethe.ranking.base import rerank_run
from lethe.ranking.listwise_train import ListwiseTrainConfig
from lethe.ranking.prompts import PASSAGE_VIEWS
from lethe.retrieval.fusion import rrf
from lethe.types import Hit

CONTEXT = 8192  # SmolLM2's context; full ranking at depth 100 must fit in it


def first_stage(ws: Workspace, ds: Dataset, args: argparse.Namespace, qids: list[str], split: str,
                ) -> dict[str, dict[str, float]]:
    """The first-stage run for ``qids``: a TREC run file (relative to the data dir) or lethe BM25."""
    if args.first_stage:
        path = Path(args.first_stage)
        run = load_trec_run(path if path.is_absolute() else Path(ds.path or args.data) / path)
        return {q: run[q] for q in qids if q in run}
    _ensure_bm25(ws, ds)
    hits = ws.load_index("bm25").search([ds.queries[q].text for q in qids], args.depth)
    return {q: {h.doc_id: h.score for h in hs} for q, hs in zip(qids, hits)}


def _ensure_bm25(ws: Workspace, ds: Dataset) -> None:
    if not len(ws.store):
        ws.ingest(ds)
    if "bm25" not in {i.ref.name for i in ws.indexes()}:
        ws.build_bm25()


def cut(run: dict[str, dict[str, float]], depth: int) -> dict[str, dict[str, float]]:
    """Each query's top ``depth``."""
    return {q: dict(sorted(d.items(), key=lambda x: -x[1])[:depth]) for q, d in run.items()}


def train_models(ws: Workspace, ds: Dataset, args: argparse.Namespace, passage_tokens: int) -> dict[str, float]:
    """Cross-encoder and listwise (full, sliding) rerankers on the train split; returns training seconds."""
    times: dict[str, float] = {}
    _ensure_bm25(ws, ds)
    train_q = train_queries(ds, args.train_queries)
    if _has(ws, args.ce_name):
        times["cross_encoder"] = ws.registry.get(args.ce_name).manifest.get("extra", {}).get("seconds")
    elif args.ce_minutes > 0:
        times.update(train_cross_encoder(ws, ds, args))
    wanted = set(args.listwise.split(","))
    if "full" in wanted and args.full_model == "encoder":
        times.update(train_one_pass(ws, ds, args))
        wanted.discard("full")  # the LLM trains only what is left
    if not {"full", "sliding"} & wanted:
        return times
    hits = ws.load_index("bm25").search([ds.queries[q].text for q in train_q], args.depth)
    run = {q: [h.doc_id for h in hs] for q, hs in zip(train_q, hits)}
    bm25 = {q: {h.doc_id: h.score for h in hs} for q, hs in zip(train_q, hits)}
    teacher = bm25 if args.teacher == "bm25" else fused_teacher(ws, {q: ds.queries[q].text for q in train_q}, bm25)
    examples = listwise_examples(ws, ds, run, teacher, "train")
    for name, window in (("listwise-full", None), ("listwise-sliding", args.window)):
        if name.removeprefix("listwise-") not in wanted:
            continue
        if _has(ws, name) and not args.retrain:
            times[name] = ws.registry.get(name).manifest.get("extra", {}).get("seconds")
            continue
        cfg = ListwiseTrainConfig(epochs=args.train_epochs, lr=args.train_lr, grad_accum=2,
                                  passage_tokens=passage_tokens, max_seconds=args.train_minutes * 60,
                                  shuffle_inputs=args.shuffle_inputs, lora_layers=args.lora_layers,
                                  first_token_loss=args.first_token_loss, rank_positions=args.rank_positions,
                                  passage_view=args.passage_view)
        on_step, close = progress_bar(name)
        t0 = time.perf_counter()
        train_listwise_reranker(ws, ds, examples, name, DEFAULT_LLM, cfg, window, args.step, on_step)
        close()
        times[name] = round(time.perf_counter() - t0, 1)
    return times


def train_cross_encoder(ws: Workspace, ds: Dataset, args: argparse.Namespace) -> dict[str, float]:
    """The pair cross-encoder ``--ce-name`` on the train split's BM25 pools (plus ``--ce-doc2query`` generated
    queries), distilling ``--ce-distill``'s scores with MarginMSE when given; returns its training seconds and,
    when it distils, the seconds spent generating queries and scoring pools."""
    times: dict[str, float] = {}
    td = training_data(ws, ds, "train", train_queries(ds, args.ce_train_queries), pool_depth=args.depth,
                       indexes=("bm25",))
    if args.ce_doc2query:
        t0 = time.perf_counter()
        judged = sorted({d for rel in ds.qrels.get("train", {}).values() for d in rel})  # dev positives too
        td = with_doc2query(ws, td, args.ce_doc2query, str(ensure_llm(ws)), exclude=judged, pool_depth=args.depth,
                            indexes=("bm25",))
        times["doc2query"] = round(time.perf_counter() - t0, 1)
    cache = None
    if args.ce_distill:
        t0 = time.perf_counter()
        cache = teacher_cache(ws, td, args.ce_distill)
        times["teacher_scores"] = round(time.perf_counter() - t0, 1)
    cfg = CETrainConfig(lr=args.ce_lr, max_length=args.ce_max_length, queries_per_step=4, epochs=args.ce_epochs,
                        max_seconds=args.ce_minutes * 60, gate=args.ce_gate,
                        distill=args.ce_distill_weight if args.ce_distill else 0.0)
    on_step, close = progress_bar(args.ce_name)
    t0 = time.perf_counter()
    train_teacher(ws, td, args.ce_name, "minilm", cfg, n_negatives=7, on_step=on_step, cache=cache)
    close()
    times["cross_encoder"] = round(time.perf_counter() - t0, 1)
    return times


def teacher_cache(ws: Workspace, td: TrainingData, teacher: str) -> str:
    """A score cache of ``teacher`` over ``td``'s pools: the registered ``TEACHER-scores`` when it scores every
    pool candidate already (runs with and without generated queries share it), else a new version."""
    name = f"{teacher}-scores"
    if _has(ws, name):
        have = load_scores(ws, str(ws.registry.get(name))).scores
        if all(d in have.get(q, {}) for q, pool in td.pools.items() for d in pool):
            return str(ws.registry.get(name))
    return str(score_pools(ws, td, teacher, name)[0])


def train_one_pass(ws: Workspace, ds: Dataset, args: argparse.Namespace) -> dict[str, float]:
    """The one-pass full-ranking model (``--full-model encoder``): MiniLM with the one-pass list head, trained
    on lists of a positive and the BM25 top-``depth`` negatives (softmax cross-entropy of the positive over
    the whole list), registered as ``listwise-full``; returns its training seconds."""
    name = "listwise-full"
    if _has(ws, name) and not args.retrain:
        return {name: ws.registry.get(name).manifest.get("extra", {}).get("seconds")}
    td = training_data(ws, ds, "train", train_queries(ds, args.ce_train_queries), pool_depth=args.depth,
                       indexes=("bm25",))
    cfg = CETrainConfig(lr=args.onepass_lr, max_length=args.onepass_tokens, queries_per_step=args.onepass_lists,
                        epochs=args.onepass_epochs, max_seconds=args.onepass_minutes * 60, gate=args.ce_gate,
                        listwise=True, passage_view=args.passage_view)
    on_step, close = progress_bar(name)
    t0 = time.perf_counter()
    negatives = args.onepass_negatives if args.onepass_negatives is not None else args.depth - 1
    train_teacher(ws, td, name, "minilm", cfg, n_negatives=negatives, on_step=on_step)
    close()
    return {name: round(time.perf_counter() - t0, 1)}


DEV_QUERIES = 100  # train-split queries held out from every model (``--eval dev``)


def dev_queries(ds: Dataset) -> list[str]:
    """The fixed-seed train-split queries no model trains on: the dev set for tuning (``--eval dev``)."""
    qids = sorted(q for q in ds.split_qrels("train") if q in ds.queries)
    return sorted(random.Random(7).sample(qids, min(DEV_QUERIES, len(qids) // 4)))


def train_queries(ds: Dataset, n: int) -> list[str]:
    """A fixed-seed sample of ``n`` train-split queries outside the dev set (0: all of them)."""
    dev = set(dev_queries(ds))
    qids = sorted(q for q in ds.split_qrels("train") if q in ds.queries and q not in dev)
    return random.Random(1).sample(qids, min(n, len(qids))) if n else qids


def eval_queries(ds: Dataset, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The split and query ids to evaluate on: ``test``, or ``dev`` (train queries no model trained on)."""
    if args.eval == "test":
        return "test", sorted(q for q in ds.split_qrels("test") if q in ds.queries)
    if "train" not in ds.qrels:
        raise SystemExit(f"--eval dev needs a train split; {args.data} has none")
    return "train", dev_queries(ds)


def dense_scores(ws: Workspace, queries: dict[str, str], run: dict[str, dict[str, float]]
                 ) -> dict[str, dict[str, float]]:
    """Cosine scores of each query's candidates under the workspace's default (pretrained) bi-encoder."""
    enc = ws.encoder()
    docs = sorted({d for cands in run.values() for d in cands})
    texts = {d.id: d.contents for d in ws.store.get_many(docs)}
    docs = [d for d in docs if d in texts]
    dvec = dict(zip(docs, enc.encode_documents([texts[d] for d in docs])))
    qids = list(run)
    qvec = enc.encode_queries([queries[q] for q in qids])
    return {q: {d: float(qv @ dvec[d]) for d in run[q] if d in dvec} for q, qv in zip(qids, qvec)}


def fused_teacher(ws: Workspace, queries: dict[str, str], run: dict[str, dict[str, float]]
                  ) -> dict[str, dict[str, float]]:
    """RRF of the first stage and the dense bi-encoder over each query's candidates (#2's fusion)."""
    dense = dense_scores(ws, queries, run)
    return {q: {h.doc_id: h.score for h in rrf([_hits(run[q]), _hits(dense[q])])} for q in run}


def _hits(scores: dict[str, float]) -> list[Hit]:
    return sorted((Hit(d, s) for d, s in scores.items()), key=lambda h: -h.score)


def _has(ws: Workspace, name: str) -> bool:
    try:
        ws.registry.get(name)
        return True
    except RegistryError:
        return False


def result_path(home: Path, args: argparse.Namespace, model: str, mode: str, qids: list[str]) -> Path:
    """Where one system's figures are kept in ``--home``: keyed by everything they depend on (collection,
    first stage, depth, window, passage tokens and view, the evaluated queries, model version and mode), so a
    later run with the same settings reuses them (runs of disjoint ``--systems`` can go in parallel and a
    last run with every system prints them together) and any change measures again."""
    key = {"data": str(Path(args.data).resolve()), "first_stage": args.first_stage, "depth": args.depth,
           "window": args.window, "step": args.step, "passage_tokens": args.passage_tokens,
           "passage_view": args.passage_view, "queries": qids, "model": model, "mode": mode}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return home / "benchmarks" / "rerank" / f"{model.replace('@', '-')}-{mode}-{digest}.json"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--first-stage", default=None, help="TREC run file, relative to --data (default: lethe BM25)")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--window", type=int, default=None, help="default: 10 at depth 20, 20 at depth 100")
    ap.add_argument("--step", type=int, default=None, help="default: window / 2")
    ap.add_argument("--queries", type=int, default=100, help="fixed-seed sample of test queries (0: all)")
    ap.add_argument("--passage-tokens", type=int, default=48)
    ap.add_argument("--passage-view", choices=PASSAGE_VIEWS, default="head",
                    help="what prompts show of a passage: its head or the query-biased snippet (LLM systems and "
                         "the one-pass list encoder, which records it)")
    ap.add_argument("--home", default=None, help="workspace (default: temp); reuse it to transfer trained models")
    ap.add_argument("--train-queries", type=int, default=200, help="train queries of the listwise models")
    ap.add_argument("--ce-train-queries", type=int, default=0, help="train queries of the cross-encoder (0: all)")
    ap.add_argument("--train-minutes", type=float, default=12, help="per listwise model")
    ap.add_argument("--train-epochs", type=float, default=1.0)
    ap.add_argument("--train-lr", type=float, default=2e-4, help="listwise LoRA learning rate")
    ap.add_argument("--lora-layers", type=int, default=0,
                    help="LoRA in the top N decoder layers only (0: all); the frozen layers below need no backward")
    ap.add_argument("--ce-minutes", type=float, default=25, help="cross-encoder training time cap")
    ap.add_argument("--ce-epochs", type=float, default=1.6, help="cross-encoder epochs (the schedule's length)")
    ap.add_argument("--ce-lr", type=float, default=3e-5)
    ap.add_argument("--ce-gate", type=float, default=-6.0,
                    help="starting cross-segment attention gate (-1e4: closed; a bi-encoder tuned in the pair layout)")
    ap.add_argument("--ce-name", default="cross-encoder", help="registry name of the trained cross-encoder")
    ap.add_argument("--ce-distill", default=None,
                    help="distil this registered cross-encoder's scores (e.g. listwise-full) with MarginMSE")
    ap.add_argument("--ce-distill-weight", type=float, default=0.5, help="MarginMSE's weight against the labels")
    ap.add_argument("--ce-doc2query", type=int, default=0,
                    help="also train on queries the packaged LLM writes for this many unjudged documents")
    ap.add_argument("--ce-max-length", type=int, default=128, help="cross-encoder tokens per pair (train and rerank)")
    ap.add_argument("--full-model", choices=("encoder", "llm"), default="encoder",
                    help="the trained full-ranking model: the one-pass list encoder (MiniLM, every candidate in one "
                         "pass) or the LLM (SmolLM2 + LoRA, generating the permutation)")
    ap.add_argument("--onepass-tokens", type=int, default=56, help="one-pass list encoder: tokens per candidate")
    ap.add_argument("--onepass-minutes", type=float, default=25, help="one-pass list encoder: training time cap")
    ap.add_argument("--onepass-epochs", type=float, default=1.0, help="one-pass list encoder: epochs (schedule)")
    ap.add_argument("--onepass-lr", type=float, default=3e-5)
    ap.add_argument("--onepass-lists", type=int, default=2, help="one-pass list encoder: lists per step")
    ap.add_argument("--onepass-negatives", type=int, default=None,
                    help="one-pass list encoder: BM25 negatives per training list (default: depth - 1)")
    ap.add_argument("--shuffle-inputs", type=float, nargs="?", const=1.0, default=0.0,
                    help="fraction of training lists shown in a shuffled order (flag alone: all)")
    ap.add_argument("--teacher", choices=("fusion", "bm25"), default="fusion",
                    help="orders the non-relevant candidates of each listwise label: RRF(BM25, dense MiniLM) or BM25")
    ap.add_argument("--first-token-loss", type=float, default=0.0,
                    help="lambda of FIRST's RankNet term on the first identifier's logits (0: NLL only)")
    ap.add_argument("--rank-positions", type=int, default=1,
                    help="identifier positions the RankNet term trains (1: the first, as FIRST; 0: every one)")
    ap.add_argument("--eval", choices=("test", "dev"), default="test",
                    help="evaluate on the test split, or on held-out train queries (dev: for tuning, not reporting)")
    ap.add_argument("--fresh", action="store_true",
                    help="measure every system again (default: reuse figures kept in --home for the same settings)")
    ap.add_argument("--retrain", action="store_true", help="train the listwise models even if --home has them")
    ap.add_argument("--listwise", default="full,sliding", help="which listwise rerankers to train (full, sliding)")
    ap.add_argument("--systems", default="cross_encoder,qlm,full,sliding,first_token,full_trained,sliding_trained,"
                                         "first_token_trained")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.window = args.window or (10 if args.depth <= 20 else 20)
    args.step = args.step or args.window // 2
    ds = load_dataset(args.data, unknown_qrels="keep")
    passage_tokens = min(args.passage_tokens, (CONTEXT - 600) // args.depth - 8)
    home = Path(args.home or tempfile.mkdtemp(prefix="lethe-rerank-"))
    out: dict = {"data": args.data, "depth": args.depth, "window": args.window, "step": args.step,
                 "passage_tokens": passage_tokens, "passage_view": args.passage_view, "home": str(home)}
    with Workspace(home, show_progress=False) as ws:
        ensure_llm(ws)
        trained = "train" in ds.qrels
        if trained:
            out["train_seconds"] = train_models(ws, ds, args, passage_tokens)
        out["transfer"] = not trained
        split, qids = eval_queries(ds, args)
        out["eval"] = args.eval
        run = cut(first_stage(ws, ds, args, qids, split), args.depth)
        qids = [q for q in qids if q in run]
        if args.queries:
            qids = sorted(random.Random(0).sample(qids, min(args.queries, len(qids))))
        run = {q: run[q] for q in qids}
        qrels = {q: ds.split_qrels(split)[q] for q in qids}
        queries = {q: ds.queries[q].text for q in qids}
        texts = {d.id: d.contents for d in ds.corpus.values()}
        out["queries"] = len(qids)
        agg, base = evaluate(run, qrels, ["nDCG@10"])
        out["first_stage"] = {"ndcg10": round(agg["nDCG@10"], 4)}
        if trained:
            labels = fused_teacher(ws, queries, run) if args.teacher == "fusion" else run
            ndcg = evaluate(labels, qrels, ["nDCG@10"])[0]["nDCG@10"]
            out["teacher"] = {"name": args.teacher, "ndcg10": round(ndcg, 4)}
        models = {"cross_encoder": (args.ce_name, "ce"), "qlm": (DEFAULT_LLM, "qlm"), "full": (DEFAULT_LLM, "full"),
                  "sliding": (DEFAULT_LLM, "sliding"), "first_token": (DEFAULT_LLM, "first_token"),
                  "full_trained": ("listwise-full", "full"), "sliding_trained": ("listwise-sliding", "sliding"),
                  "first_token_trained": ("listwise-full", "first_token")}
        for key in filter(None, args.systems.split(",")):
            name, mode = models[key]
            if key in ("full_trained", "first_token_trained") and _has(ws, name) and \
                    ws.registry.get(name).kind == "cross_encoder":  # the one-pass list encoder
                if key == "first_token_trained":
                    continue
                mode = "one_pass"
            if not _has(ws, name):
                out[key] = {"skipped": f"{name} not in {home} (train it on a collection with a train split)"}
                continue
            cache = result_path(home, args, str(ws.registry.get(name)), mode, qids) if args.home else None
            if cache is not None and cache.exists() and not args.fresh:
                out[key] = {**json.loads(cache.read_text()), "cached": str(cache)}
                continue
            rr = load_reranker(ws, name, mode, args.window, args.step, passage_tokens, texts=texts,
                               passage_view=args.passage_view)
            new, stats = rerank_run(rr, run, queries, args.depth)
            fused = {q: {h.doc_id: h.score for h in rrf([_hits(run[q]), _hits(new[q])])} for q in qids}
            agg, per_query = evaluate(new, qrels, ["nDCG@10"])
            out[key] = {"model": str(ws.registry.get(name)), "mode": mode,
                        "ndcg10": round(agg["nDCG@10"], 4),
                        "delta_ci": [round(x, 4) for x in delta_ci(per_query, base)],
                        "ndcg10_fused": round(evaluate(fused, qrels, ["nDCG@10"])[0]["nDCG@10"], 4),
                        **stats.per_query(len(qids))}
            if cache is not None:
                write_atomic(cache, json.dumps(out[key]))
            print(key, json.dumps(out[key]), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
