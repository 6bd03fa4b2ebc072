"""``lethe demo``: the whole index-level story on a collection with real user ids."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lethe.data import load_dataset
from lethe.pipelines.evaluate import evaluate_retriever
from lethe.pipelines.forget import forget, verify_workspace
from lethe.pipelines.workspace import Workspace
from lethe.types import ForgetRequest

RETRIEVERS = ("bm25", "dense", "rrf")
MEASURES = ("nDCG@10", "R@100", "RR@10")


def _evaluate_all(ws: Workspace, queries: dict[str, str], qrels: dict) -> dict[str, dict[str, float]]:
    return {r: evaluate_retriever(ws.retriever(r), queries, qrels, MEASURES, 100)[0] for r in RETRIEVERS}


def run_demo(data: str = "stackexchange-cardano", home: Path | None = None, console: Console | None = None) -> dict:
    """Index, evaluate, forget the most prolific owner, verify, re-evaluate; returns the figures."""
    console = console or Console()
    t0 = time.perf_counter()
    home = home or Path(tempfile.mkdtemp(prefix="lethe-demo-"))
    ds = load_dataset(data)
    qrels = ds.split_qrels("test")
    with Workspace(home) as ws:
        console.rule(f"[bold]lethe demo[/bold] on {ds.name}: {len(ds.corpus)} docs, {len(qrels)} test queries")
        ws.ingest(ds)
        ws.build_bm25()
        ws.build_dense()
        console.print(f"indexes built in {time.perf_counter() - t0:.0f}s under {home}")
        owner, n_docs = ws.store.owner_counts()[0]
        user_queries = set(ws.store.queries_of_owner(owner))
        # compare on the same queries before and after: those the user did not ask
        kept = {q: d for q, d in qrels.items() if q not in user_queries}
        queries = {q: ds.queries[q].text for q in kept}
        before = _evaluate_all(ws, queries, kept)
        console.print(f"forgetting user {owner!r}: {n_docs} answers, {len(user_queries)} questions")
        t1 = time.perf_counter()
        report = forget(ws, ForgetRequest(owners=(owner,), reason="demo: user asked to be forgotten"))
        forget_s = time.perf_counter() - t1
        after = _evaluate_all(ws, queries, kept)
        again = forget(ws, ForgetRequest(owners=(owner,)))
        reingest = ws.ingest(ds)  # the original collection again: the forgotten answers are refused
        check = verify_workspace(ws)
    _show(console, before, after)
    hidden = ("doc_hashes", "query_hashes", "content_hashes")
    receipt = {k: v for k, v in report.receipt.items() if k not in hidden}
    receipt["doc_hashes"] = f"{len(report.receipt['doc_hashes'])} keyed HMAC-SHA256 hashes"
    console.rule("receipt")
    console.print_json(data=receipt)
    console.print(f"forget took {forget_s:.1f}s; level: [bold]{report.level}[/bold]; replay was a no-op: "
                  f"{again.noop}; re-ingesting the collection refused {reingest.refused_docs} forgotten documents; "
                  f"lethe verify: {'passed' if check['ok'] else 'FAILED'}; "
                  f"total {time.perf_counter() - t0:.0f}s")
    return {"before": before, "after": after, "level": report.level, "verify_ok": check["ok"],
            "refused_on_reingest": reingest.refused_docs}


def _show(console: Console, before: dict, after: dict) -> None:
    table = Table(title="retrieval on the other users' questions, before -> after forgetting")
    table.add_column("retriever")
    for m in MEASURES:
        table.add_column(m)
    for r in RETRIEVERS:
        table.add_row(r, *[f"{before[r][m]:.4f} -> {after[r][m]:.4f}" for m in MEASURES])
    console.print(table)
