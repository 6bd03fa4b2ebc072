"""Sequential forget requests with ``--unlearn auto``, then the retrained oracle (issue #19).

1. Trains a small student the way ``lethe train embedder --recipe contrastive --shards K`` does (the same
   library calls: ``training_data(...).hold_out(...)`` then ``train_embedder``): the packaged MiniLM,
   InfoNCE over each training query's judged positives and its BM25+dense pool negatives, in K SISA shards
   by owner, with 15 % of the training queries held out as the audit's registered reference.
2. Serves N sequential requests through ``lethe.pipelines.forget.forget(..., unlearn="auto")`` — the
   function ``lethe forget`` calls: Stack Exchange users (``--owners``, users with >= ``--min-docs``
   documents among the trained positives) or single documents (trained positives). Each request's seconds
   cover everything the CLI does: unlearning (route chosen by ``auto``), the oracle-free audit, the store,
   index and cache steps, verification and the receipt.
3. Retrains an oracle without all N requests' data (every shard from the init model, the same recipe:
   what ``--unlearn retrain`` does for this model) and compares:
   ``mia_auc_after`` / ``mia_auc_oracle`` (every forget pair vs the registered non-member pairs),
   ``ks_p_vs_oracle`` (forget-pair scores of the final model vs the oracle's), retain nDCG@10 on up to 300
   test queries (BM25 top-20 of the final index re-scored; the original model, the final one, the oracle),
   and per request whether the audit's oracle-free finding (no check failed) matches the oracle comparison
   (|MIA gap| <= 0.05 and KS p >= 0.05 on that request's pairs).
4. ``trace_found``: files of the workspace holding a forgotten id (``lethe verify``'s scan) or any 32-byte
   run of a forgotten text (searched here directly, with the texts the benchmark kept in memory).

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from train_embedder import with_split  # the same seeded 70/30 query split as the other benchmarks

from lethe.data import Dataset, load_dataset
from lethe.embedding.train import EmbedTrainConfig
from lethe.pipelines.forget import forget, verify_workspace
from lethe.pipelines.train import bi_encoder_recipe, train_embedder, train_shards, training_data
from lethe.pipelines.unlearn import probe_ndcg, scorer_of
from lethe.pipelines.workspace import Workspace
from lethe.training.scorers import BiEncoderScorer, pair_scores
from lethe.types import ForgetRequest
from lethe.unlearning.sets import split_examples
from lethe.unlearning.verify import ks_p, mia_auc

WINDOW = 32


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def pick_requests(ds: Dataset, rows: list, n: int, owners: bool, min_docs: int) -> list[ForgetRequest]:
    """N seeded requests: users with >= ``min_docs`` documents, one of them a trained positive; or
    single trained positives."""
    positives = sorted({e.positive for e in rows})
    rng = random.Random(0)
    if not owners:
        return [ForgetRequest((d,), (), "benchmark") for d in rng.sample(positives, min(n, len(positives)))]
    docs_of: dict[str, list[str]] = {}
    for d in ds.corpus.values():
        for o in d.owners:
            docs_of.setdefault(o, []).append(d.id)
    trained = set(positives)
    users = sorted(u for u, ds_ in docs_of.items() if len(ds_) >= min_docs and trained & set(ds_))
    return [ForgetRequest((), (u,), "benchmark") for u in rng.sample(users, min(n, len(users)))]


def request_ids(ds: Dataset, req: ForgetRequest) -> tuple[set[str], set[str]]:
    """Documents and queries a request removes."""
    docs = set(req.doc_ids) | {d.id for d in ds.corpus.values() if set(d.owners) & set(req.owners)}
    queries = {q.id for q in ds.queries.values() if set(q.owners) & set(req.owners)}
    return docs, queries


def student_step(receipt: dict, name: str) -> dict:
    return next(m for m in receipt["unlearning"] if m["model"].split("@")[0] == name)


#: runs of printable text (ASCII or UTF-8 multi-byte sequences) long enough to hold a window
TEXT_RUN = re.compile(rb"(?:[\x20-\x7e\t\n\r]|[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}"
                      rb"|[\xf0-\xf4][\x80-\xbf]{3}){32,}")


def text_trace(home: Path, texts: list[str], kept: list[str]) -> list[str]:
    """Files under ``home`` holding a 32-byte window of ``texts`` that no kept text holds (searched
    directly, no hashing): every window of every printable run of every file is looked up in the set of
    the forgotten texts' windows. A window also in a kept text is another record's (SciFact abstracts
    share sentences), as ``lethe verify`` counts it."""
    def windows(items: list[str]) -> set[bytes]:
        return {t.encode()[i : i + WINDOW] for t in items for i in range(max(0, len(t.encode()) - WINDOW + 1))}

    wanted = windows(texts) - windows(kept)
    found = []
    for path in sorted(home.rglob("*")):
        if not path.is_file() or not wanted:
            continue
        for run in TEXT_RUN.finditer(path.read_bytes()):
            chunk = run.group()
            if any(chunk[i : i + WINDOW] in wanted for i in range(len(chunk) - WINDOW + 1)):
                found.append(str(path.relative_to(home)))
                break
    return found


def kept_texts(ws: Workspace) -> list[str]:
    """Every text the workspace keeps: documents (title, text, both), queries, metadata strings."""
    out: list[str] = []
    for d in ws.store.iter_docs():
        out += [d.title, d.text, d.contents, *(json.dumps(v) for v in d.metadata.values())]
    out += list(ws.store.query_texts(ws.store.query_ids()).values())
    out += [m for (m,) in ws.store.conn.execute("SELECT metadata FROM queries")]
    return out


def scores_of(scorer: BiEncoderScorer, run: dict[str, list[str]], queries: dict[str, str],
              texts: dict[str, str]) -> dict[str, dict[str, float]]:
    """Every (query, candidate) score, each document embedded once."""
    docs = sorted({d for c in run.values() for d in c})
    emb_d = dict(zip(docs, scorer.embed_docs([texts[d] for d in docs])))
    qids = sorted(run)
    emb_q = dict(zip(qids, scorer.embed_docs([queries[q] for q in qids])))
    return {q: {d: float(emb_q[q] @ emb_d[d]) for d in c} for q, c in run.items()}


def merged_vs_ensemble(ws: Workspace, ref, ds: Dataset, merged: BiEncoderScorer, n: int,  # noqa: ANN001
                       max_length: int) -> dict:
    """nDCG@10 and seconds of the merged model vs the score ensemble of its K shard models."""
    from lethe.pipelines.evaluate import evaluate
    from lethe.unlearning.sharded import ShardedModel

    base = BiEncoderScorer(ws.registry.load(ws.registry.get("minilm")), max_length)
    sharded = ShardedModel.load(ws.registry.resolve_path(ref) / "shards", base, lambda sc, rows: None)
    qrels = ds.split_qrels("test")
    qids = sorted(random.Random(2).sample(sorted(qrels), min(n, len(qrels))))
    queries = {q: ds.queries[q].text for q in qids}
    hits = ws.load_index("bm25").search([queries[q] for q in qids], 20)
    run = {q: [h.doc_id for h in hs] for q, hs in zip(qids, hits)}
    texts = {d: ds.corpus[d].contents for c in run.values() for d in c}
    t0 = time.perf_counter()
    merged_run = scores_of(merged, run, queries, texts)
    t_merged = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = [scores_of(sharded.member(s), run, queries, texts) for s in sorted(sharded.shards)]
    ensemble = {q: {d: float(np.mean([p[q][d] for p in parts])) for d in c} for q, c in run.items()}
    t_ensemble = time.perf_counter() - t0
    sub = {q: qrels[q] for q in qids}
    return {"queries": len(qids), "merged_ndcg10": round(evaluate(merged_run, sub, ["nDCG@10"])[0]["nDCG@10"], 4),
            "ensemble_ndcg10": round(evaluate(ensemble, sub, ["nDCG@10"])[0]["nDCG@10"], 4),
            "ensemble_seconds_over_merged": round(t_ensemble / t_merged, 2)}


def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=None, help="stop serving requests after this long")
    ap.add_argument("--owners", action="store_true", help="user requests (default: single documents)")
    ap.add_argument("--min-docs", type=int, default=5)
    ap.add_argument("--shards", type=int, default=24)
    ap.add_argument("--shard-lr-scale", type=float, default=5.0)
    ap.add_argument("--train-queries", type=int, default=350, help="training queries sampled (0: all)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval-queries", type=int, default=300)
    ap.add_argument("--ensemble-queries", type=int, default=0,
                    help="also score N test queries with the K shard models as a score ensemble (mean of their "
                         "scores) beside the merged model, before any request")
    ap.add_argument("--home", default=None, help="workspace (default: a new temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ds = with_split(load_dataset(args.data), 0.3)
    home = Path(args.home or tempfile.mkdtemp(prefix="lethe-forget-requests-")) / "home"
    out: dict = {"data": Path(args.data).name, "shards": args.shards}
    with Workspace(home, show_progress=False) as ws:
        ws.ingest(ds)
        ws.build_bm25()
        ws.build_dense()
        train_q = sorted(q for q in ds.split_qrels("train") if q in ds.queries)
        if args.train_queries:
            train_q = sorted(random.Random(0).sample(train_q, min(args.train_queries, len(train_q))))
        data, reference = training_data(ws, ds, "train", query_ids=train_q, pool_depth=30).hold_out(0.15)
        cfg = EmbedTrainConfig(recipe="contrastive", epochs=args.epochs, lr=args.lr, batch_size=16,
                               max_length=args.max_length)
        t0 = time.perf_counter()
        ref, _, rows = train_embedder(ws, data, None, cfg, "student", n_negatives=args.negatives,
                                      reference=reference, shards=args.shards, shard_lr_scale=args.shard_lr_scale)
        out.update(seconds_train=round(time.perf_counter() - t0, 1), train_groups=len(rows),
                   reference_pairs=len(reference.nonmember_pairs), probe_queries=len(reference.probe_qrels))
        log(json.dumps(out))
        original = scorer_of(ws, ref)
        if args.ensemble_queries:
            out["serving"] = merged_vs_ensemble(ws, ref, ds, original, args.ensemble_queries, args.max_length)
            log(json.dumps(out["serving"]))
        requests = pick_requests(ds, rows, args.requests, args.owners, args.min_docs)
        per: list[dict] = []
        started = time.perf_counter()
        for i, req in enumerate(requests):
            if args.minutes and time.perf_counter() - started > args.minutes * 60:
                break
            docs, queries = request_ids(ds, req)
            pairs = split_examples(rows, docs, queries).forget_pairs
            t0 = time.perf_counter()
            rep = forget(ws, req, unlearn="auto")
            seconds = time.perf_counter() - t0
            step = student_step(rep.receipt, "student")
            per.append({"seconds": seconds, "level": step["level"], "route": step.get("route"),
                        "audit": step.get("audit"), "pairs": pairs, "docs": docs, "queries": queries,
                        "shards": step.get("shards_retrained"), "reached": rep.reached})
            log(f"request {i + 1}/{len(requests)}: {len(docs)} docs, {len(pairs)} pairs, {seconds:.1f}s, "
                f"{step.get('route')} -> {step['level']}, shards {step.get('shards_retrained')}, audit "
                f"{(step.get('audit') or {}).get('verdict')} {(step.get('audit') or {}).get('failed')}")
        final = scorer_of(ws, ws.registry.get("student"))
        # ---- the oracle: every shard retrained from the init model without all requests' data
        all_docs = set().union(*(p["docs"] for p in per)) if per else set()
        all_q = set().union(*(p["queries"] for p in per)) if per else set()
        remaining = split_examples(rows, all_docs, all_q).remaining
        texts = {d.id: d.contents for d in ds.corpus.values()}
        queries_text = {q.id: q.text for q in ds.queries.values()}
        from lethe.pipelines.train import TrainingData

        owners = {d.id: d.owners for d in ds.corpus.values()}
        owners.update({f"query:{q.id}": q.owners for q in ds.queries.values()})
        holder = TrainingData(queries_text, {}, texts, {}, owners)
        base = BiEncoderScorer(ws.registry.load(ws.registry.get("minilm")), args.max_length)
        t0 = time.perf_counter()
        oracle = train_shards(base, bi_encoder_recipe(cfg, queries_text, texts, args.shard_lr_scale), remaining,
                              holder, args.shards).combined()
        seconds_retrain = time.perf_counter() - t0
        log(f"oracle retrained in {seconds_retrain:.0f}s")
        # ---- figures
        ref_now = reference.without(all_docs, all_q)
        ref_pairs = ref_now.nonmember_pairs
        score = {name: (lambda pairs, m=m: pair_scores(m, pairs, queries_text, texts))
                 for name, m in (("original", original), ("final", final), ("oracle", oracle))}
        forget_all = [p for r in per for p in r["pairs"]]
        f_after, f_oracle = score["final"](forget_all), score["oracle"](forget_all)
        r_after, r_oracle = score["final"](ref_pairs), score["oracle"](ref_pairs)
        agree = []
        for r in per:
            if not r["pairs"]:
                continue
            a, o = score["final"](r["pairs"]), score["oracle"](r["pairs"])
            oracle_says = abs(mia_auc(a, r_after) - mia_auc(o, r_oracle)) <= 0.05 and ks_p(a, o) >= 0.05
            audit = r["audit"] or {}
            audit_says = bool(audit) and not audit.get("failed")
            agree.append(oracle_says == audit_says)
        test_qrels = ds.split_qrels("test")
        eval_q = sorted(random.Random(1).sample(sorted(test_qrels), min(args.eval_queries, len(test_qrels))))
        hits = ws.load_index("bm25").search([queries_text[q] for q in eval_q], 20)
        run = {q: [h.doc_id for h in hs] for q, hs in zip(eval_q, hits)}
        qrels = {q: {d: r for d, r in test_qrels[q].items() if d not in all_docs} for q in eval_q}
        retain = {name: probe_ndcg(m, run, queries_text, texts, qrels)
                  for name, m in (("before", original), ("after", final), ("oracle", oracle))}
        check = verify_workspace(ws)
        trace_files = set(check.get("trace", {}).get("found", []))
        kept = kept_texts(ws)
    forgotten_texts = [t for d in all_docs for t in (texts[d], ds.corpus[d].title, ds.corpus[d].text)]
    forgotten_texts += [queries_text[q] for q in all_q]
    trace_files |= set(text_trace(home, forgotten_texts, kept))
    seconds = [r["seconds"] for r in per]
    out.update(
        requests=len(per), levels=dict(Counter(r["level"] for r in per)), routes=dict(Counter(r["route"] for r in per)),
        reached=sum(r["reached"] for r in per),
        seconds_mean=round(float(np.mean(seconds)), 2) if seconds else None,
        seconds_max=round(float(np.max(seconds)), 2) if seconds else None,
        seconds_retrain=round(seconds_retrain, 2),
        ratio_mean_to_retrain=round(float(np.mean(seconds)) / seconds_retrain, 4) if seconds else None,
        shards_per_request=[len(r["shards"] or []) for r in per],
        retain_ndcg10_before=round(retain["before"], 4), retain_ndcg10_after=round(retain["after"], 4),
        retain_ndcg10_oracle=round(retain["oracle"], 4), eval_queries=len(eval_q),
        forget_pairs=len(forget_all), reference_pairs_left=len(ref_pairs),
        mia_auc_after=round(mia_auc(f_after, r_after), 4), mia_auc_oracle=round(mia_auc(f_oracle, r_oracle), 4),
        ks_p_vs_oracle=round(ks_p(f_after, f_oracle), 4),
        audit_agrees_with_oracle=round(float(np.mean(agree)), 4) if agree else None,
        audit_verdicts=dict(Counter((r["audit"] or {}).get("verdict") for r in per)),
        verify_ok=bool(check["ok"]), ids_ambiguous=check.get("trace", {}).get("ids_ambiguous"),
        trace_found=len(trace_files), trace_files=sorted(trace_files),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
