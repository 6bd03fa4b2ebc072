"""Early-learning regularisation (ELR) under label noise: MiniLM trained with the plain group recipe.

The packaged MiniLM is fine-tuned with ``train_groups`` (InfoNCE over a judged positive and ``--negatives``
BM25 negatives that are not judged; one group per (train query, positive)) on ``--train-queries`` seeded
train-split queries, ``--epochs`` epochs, the same seeds for every run:

* ``clean``: the groups as judged;
* for each ``--noise`` fraction: that fraction of the groups (seeded, nested: the groups corrupted at 0.2
  are among those corrupted at 0.4) get their positive replaced by a random corpus document that is not
  judged for the query (symmetric label noise), trained ``plain`` and with ``elr``
  (``ELRConfig(--elr-beta, --elr-lam, --elr-start, --elr-select)``; its per-example targets live for one run
  and are never written; with a select threshold, ``doubted`` counts the groups whose labels it skipped at the
  end and ``doubted_wrong`` how many of them were corrupted);
* ``base``: the untrained MiniLM, for reference (``--clean-elr`` adds the clean groups trained with ELR).

Each model re-scores the BM25 top ``--depth`` of two query sets: ``dev``, train-split queries left out of the
training sample, and ``test``, the test split. ``--elr-lam`` and ``--elr-select`` take comma lists: every pair
is trained, the one with the best dev nDCG@10 at each noise level is chosen (``chosen_lam``,
``chosen_select``), and the deltas are reported on test for it (tuned on dev, never on test). Reported per run
and query set: nDCG@10; per run the training seconds and ``final_loss`` (the mean training loss of the last 5
steps; an ELR run's includes its penalty, which is negative: not comparable with a plain run's). Per noise
level: the mean per-query test nDCG@10 difference and its paired-bootstrap 95% interval (``delta_ci``) of ELR
- plain, ELR - clean and plain - clean. Last stdout line: one JSON object with every figure; progress on
stderr.

    python benchmarks/elr.py --data scifact --noise 0.2,0.4 --elr-lam 1,3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from train_embedder import with_split  # the same seeded 70/30 query split as the other benchmarks
from unlearn import groups_for, minilm  # the same groups and model as the unlearning benchmark

from lethe.data import Dataset, load_dataset
from lethe.pipelines.evaluate import delta_ci, evaluate
from lethe.pipelines.workspace import Workspace
from lethe.training.contrastive import train_groups
from lethe.training.elr import ELRConfig, ELRTargets
from lethe.training.pools import MinedExample
from lethe.training.scorers import BiEncoderScorer

PerQuery = dict[str, dict[str, float]]
#: every model is evaluated on both: dev (train-split queries not trained on) to choose lam, test to report
SPLITS = ("dev", "test")


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def corrupt(groups: Sequence[MinedExample], frac: float, doc_ids: Sequence[str],
            judged: Mapping[str, Mapping[str, int]], seed: int = 0) -> tuple[list[MinedExample], int]:
    """Symmetric label noise: ``round(frac * len)`` groups, the first of one seeded permutation (so a lower
    fraction's groups are among a higher one's), get a random document not judged for their query (and not
    one of their negatives) as positive; each replacement is seeded by the group. Returns (groups, count)."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n = int(round(frac * len(groups)))
    out = list(groups)
    for i in order[:n]:
        e = groups[i]
        rng = random.Random(f"{seed}\t{e.query_id}\t{e.positive}")
        bad = set(judged.get(e.query_id, {})) | set(e.negatives)
        d = rng.choice(doc_ids)
        while d in bad:
            d = rng.choice(doc_ids)
        out[i] = MinedExample(e.query_id, d, e.negatives, e.teacher)
    return out, n


def rescored(scorer: BiEncoderScorer, run: Mapping[str, list[str]], queries: Mapping[str, str],
             texts: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> tuple[float, PerQuery]:
    """nDCG@10 (mean, per query) of the queries' BM25 candidates re-scored by the model."""
    import torch

    out = {}
    scorer.module.eval()
    with torch.no_grad():
        for q, cands in run.items():
            s = scorer.scores([queries[q]], [[texts[d] for d in cands]])[0].float().numpy()
            out[q] = {d: float(v) for d, v in zip(cands, s)}
    agg, per_query = evaluate(out, dict(qrels), ["nDCG@10"])
    return agg["nDCG@10"], per_query


def delta(a: PerQuery, b: PerQuery) -> dict[str, float | list[float]]:
    """Mean per-query nDCG@10 difference ``a - b`` and its paired-bootstrap 95% interval."""
    mean = sum(a[q]["nDCG@10"] - b[q]["nDCG@10"] for q in a) / len(a)
    lo, hi = delta_ci(a, b, "nDCG@10")
    return {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def eval_queries(ds: Dataset, which: str, train_q: Sequence[str], n: int) -> tuple[list[str], dict]:
    """The evaluation queries and their qrels: a seeded sample of ``n`` test queries, or of the train-split
    queries not used for training (dev)."""
    if which == "test":
        qrels = ds.split_qrels("test")
        pool = sorted(q for q in qrels if q in ds.queries)
    else:
        qrels, used = ds.split_qrels("train"), set(train_q)
        pool = sorted(q for q in qrels if q in ds.queries and q not in used)
    chosen = sorted(random.Random(1).sample(pool, min(n, len(pool))))
    return chosen, {q: qrels[q] for q in chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="scifact", help="collection name ($LETHE_DATA) or path")
    ap.add_argument("--noise", default="0.2,0.4", help="comma list of corrupted-group fractions")
    ap.add_argument("--train-queries", type=int, default=300, help="seeded sample of train queries (0: all)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--depth", type=int, default=20, help="BM25 depth for negatives and for re-scoring")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--elr-beta", type=float, default=0.7)
    ap.add_argument("--elr-start", choices=("zeros", "model"), default="zeros",
                    help="where ELR's targets start: zeros (the paper) or the untrained model's predictions")
    ap.add_argument("--elr-select", default="0",
                    help="comma list of ELR select thresholds (0: learn every label; > 0 needs --elr-start model); "
                         "every (lam, select) pair is trained and the best on dev is reported on test")
    ap.add_argument("--elr-lam", default="1,3", help="comma list; the best on dev is reported on test")
    ap.add_argument("--clean-elr", action="store_true", help="also train the clean groups with ELR")
    ap.add_argument("--queries", type=int, default=300, help="evaluation queries (seeded sample)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the query sample and of the label noise")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    noises = [float(x) for x in args.noise.split(",") if x.strip() and float(x) > 0]
    lams = [float(x) for x in args.elr_lam.split(",") if x.strip()]
    selects = [float(x) for x in args.elr_select.split(",") if x.strip()]
    grid = [(lam, sel) for lam in lams for sel in selects]

    ds = with_split(load_dataset(args.data), 0.3)
    texts = {d.id: d.contents for d in ds.corpus.values()}
    queries = {q.id: q.text for q in ds.queries.values()}
    train_qrels = ds.split_qrels("train")
    out: dict = {"data": args.data, "epochs": args.epochs, "lr": args.lr, "batch": args.batch,
                 "negatives": args.negatives, "elr": {"beta": args.elr_beta, "lams": lams, "selects": selects,
                                                          "start": args.elr_start}}
    with tempfile.TemporaryDirectory(prefix="lethe-elr-") as tmp, \
            Workspace(Path(tmp) / "home", show_progress=False) as ws:  # the ledger key and head too
        ws.ingest(ds)
        ws.build_bm25()
        train_q = sorted(q for q in train_qrels if q in ds.queries)
        if args.train_queries:
            train_q = sorted(random.Random(args.seed).sample(train_q, min(args.train_queries, len(train_q))))
        groups = groups_for(ws, ds, train_q, args.negatives, args.depth)
        sets = {}
        for split in SPLITS:
            eval_q, eval_qrels = eval_queries(ds, split, train_q, args.queries)
            hits = ws.load_index("bm25").search([queries[q] for q in eval_q], args.depth)
            sets[split] = ({q: [h.doc_id for h in hs] for q, hs in zip(eval_q, hits)}, eval_qrels)
    out.update(train_queries=len(train_q), train_groups=len(groups), queries={k: len(v[1]) for k, v in sets.items()})
    log(json.dumps(out))
    doc_ids = sorted(texts)
    runs: dict[str, dict] = {}
    per_query: dict[str, dict[str, PerQuery]] = {split: {} for split in SPLITS}

    def measure(name: str, rows: list[MinedExample] | None, elr_cfg: ELRConfig | None = None,
                wrong: set[tuple[str, str]] = frozenset(), **extra: object) -> None:
        sc = minilm(args.max_length)
        t0 = time.perf_counter()
        if rows is not None:
            targets = ELRTargets(elr_cfg) if elr_cfg is not None else None
            losses = train_groups(sc, rows, queries, texts, args.epochs, args.lr, args.batch, seed=42, elr=targets)
            extra = {**extra, "final_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4)}
            if targets is not None and elr_cfg.select:
                doubted = set(targets.doubted())
                extra.update(doubted=len(doubted), doubted_wrong=len(doubted & wrong))
        seconds = time.perf_counter() - t0
        runs[name] = {"seconds": round(seconds, 1), **extra}
        for split, (run, qrels) in sets.items():
            ndcg, per_query[split][name] = rescored(sc, run, queries, texts, qrels)
            runs[name][f"ndcg10_{split}"] = round(ndcg, 4)
        log(name, json.dumps(runs[name]))

    measure("base", None)
    measure("clean", groups)

    def elr_name(tag: str, lam: float, sel: float) -> str:
        return f"{tag}_elr{lam:g}" + (f"_sel{sel:g}" if sel else "")

    if args.clean_elr:
        for lam, sel in grid:
            measure(elr_name("clean", lam, sel), groups, ELRConfig(args.elr_beta, lam, args.elr_start, sel))
    test = per_query["test"]
    deltas: dict[str, dict] = {}
    for noise in noises:
        noisy, n_bad = corrupt(groups, noise, doc_ids, train_qrels, args.seed)
        wrong = {(e.query_id, e.positive) for e in noisy} - {(e.query_id, e.positive) for e in groups}
        tag = f"noise{noise:g}"
        measure(f"{tag}_plain", noisy, corrupted=n_bad)
        for lam, sel in grid:
            measure(elr_name(tag, lam, sel), noisy, ELRConfig(args.elr_beta, lam, args.elr_start, sel), wrong,
                    corrupted=n_bad)
        best = max(grid, key=lambda ls, t=tag: runs[elr_name(t, *ls)]["ndcg10_dev"])  # chosen on dev
        elr = elr_name(tag, *best)
        deltas[tag] = {"chosen_lam": best[0], "chosen_select": best[1],
                       "elr_minus_plain": delta(test[elr], test[f"{tag}_plain"]),
                       "elr_minus_clean": delta(test[elr], test["clean"]),
                       "plain_minus_clean": delta(test[f"{tag}_plain"], test["clean"])}
        log(tag, json.dumps(deltas[tag]))
    out.update(runs=runs, deltas=deltas)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
