"""The ``lethe`` command line: index, search, eval, forget, verify, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lethe.errors import LetheError

app = typer.Typer(
    help="lethe: search that can forget. Build BM25 + dense indexes, search, evaluate, and remove "
    "documents or whole users from every index with a verifiable receipt.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

HomeOpt = Annotated[Path | None, typer.Option("--home", help="workspace directory ($LETHE_HOME or ./.lethe)")]


def _workspace(home: Path | None, show_progress: bool = True):  # noqa: ANN202
    from lethe.pipelines.workspace import Workspace

    return Workspace(home, show_progress=show_progress)


def _load(data: str, owner_field: str | None, unknown_qrels: str, empty_docs: str):  # noqa: ANN202
    from lethe.data import load_dataset

    return load_dataset(data, owner_field=owner_field, unknown_qrels=unknown_qrels, empty_docs=empty_docs)


@app.command()
def index(
    data: Annotated[str, typer.Option(help="dataset name under $LETHE_DATA, BEIR dir, JSONL or hf:org/name")],
    home: HomeOpt = None,
    owner_field: Annotated[str | None, typer.Option(help="dotted metadata field with owner ids")] = None,
    dense: Annotated[bool, typer.Option(help="also build the dense index")] = True,
    dense_kind: Annotated[str, typer.Option(help="flat | ivf | hnsw")] = "flat",
    encoder: Annotated[str, typer.Option(help="registry name of the bi-encoder")] = "minilm",
    variant: Annotated[str, typer.Option(help="BM25 variant: lucene | okapi")] = "lucene",
    unknown_qrels: Annotated[str, typer.Option(help="error | keep | drop")] = "error",
    empty_docs: Annotated[str, typer.Option(help="error | skip")] = "error",
) -> None:
    """Ingest a dataset into the store and build BM25 (and dense) indexes over it."""
    ds = _load(data, owner_field, unknown_qrels, empty_docs)
    with _workspace(home) as ws:
        n = ws.ingest(ds)
        console.print(f"ingested {n} documents, {len(ds.queries)} queries into {ws.home}")
        ws.build_bm25(variant=variant)
        console.print("built index bm25")
        if dense:
            ws.build_dense(encoder=encoder, kind=dense_kind)
            console.print(f"built index dense ({dense_kind}, encoder {encoder})")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="the query text")],
    home: HomeOpt = None,
    retriever: Annotated[str, typer.Option("--index", "-i", help="bm25 | dense | rrf | convex")] = "bm25",
    k: Annotated[int, typer.Option("-k", help="number of hits")] = 10,
) -> None:
    """Search the workspace's indexes."""
    with _workspace(home, show_progress=False) as ws:
        hits = ws.retriever(retriever).search([query], k)[0]
        docs = {d.id: d for d in ws.store.get_many([h.doc_id for h in hits])}
        table = Table("rank", "doc", "score", "text")
        for r, h in enumerate(hits, start=1):
            text = docs[h.doc_id].contents[:90] if h.doc_id in docs else ""
            table.add_row(str(r), h.doc_id, f"{h.score:.4f}", text)
        console.print(table)


@app.command("eval")
def eval_(
    data: Annotated[str, typer.Option(help="dataset (its queries and qrels are used)")],
    home: HomeOpt = None,
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    retriever: Annotated[str, typer.Option(help="bm25 | dense | rrf | convex")] = "bm25",
    measures: Annotated[str, typer.Option(help="ir-measures strings, space separated")] = "nDCG@10 R@100 RR@10",
    k: Annotated[int, typer.Option(help="depth of the run")] = 100,
    out: Annotated[Path, typer.Option(help="where the TREC run and per-query figures go")] = Path("runs"),
    unknown_qrels: Annotated[str, typer.Option(help="error | keep | drop")] = "error",
    empty_docs: Annotated[str, typer.Option(help="error | skip")] = "error",
) -> None:
    """Evaluate a retriever (or fusion) on a dataset split; builds the indexes first if needed."""
    from lethe.pipelines.evaluate import evaluate_retriever

    ds = _load(data, None, unknown_qrels, empty_docs)
    with _workspace(home) as ws:
        if not ws.indexes():
            ws.ingest(ds)
            ws.build_bm25()
            if retriever != "bm25":
                ws.build_dense()
        qrels = _unforgotten(ws, ds.split_qrels(split))
        queries = {q: ds.queries[q].text for q in qrels if q in ds.queries}
        tag = f"{ds.name}.{split}.{retriever}"
        agg, _, _ = evaluate_retriever(ws.retriever(retriever), queries, qrels, measures.split(), k, out, tag)
    table = Table("measure", "value", title=f"{retriever} on {ds.name}/{split} ({len(queries)} queries)")
    for m, v in agg.items():
        table.add_row(m, f"{v:.4f}")
    console.print(table)
    console.print(f"run: {out / (tag + '.run')}  per-query: {out / (tag + '.perquery.tsv')}")


def _unforgotten(ws, qrels: dict) -> dict:  # noqa: ANN001
    gone = ws.ledger.forgotten_hashes("query")
    return {q: d for q, d in qrels.items() if ws.ledger.hash_id(q, "query") not in gone}


@app.command()
def forget(
    home: HomeOpt = None,
    doc: Annotated[list[str] | None, typer.Option("--doc", help="a document id (repeatable)")] = None,
    owner: Annotated[list[str] | None, typer.Option("--owner", help="an owner/user id (repeatable)")] = None,
    reason: Annotated[str, typer.Option(help="why (kept in the receipt)")] = "",
    resume: Annotated[bool, typer.Option("--resume", help="finish requests interrupted by a crash")] = False,
    crash_after: Annotated[str | None, typer.Option(hidden=True, help="test hook: crash after a step")] = None,
) -> None:
    """Remove documents (or every document of an owner) from the store, every index and cache."""
    from lethe.pipelines.forget import forget as run_forget
    from lethe.pipelines.forget import resume as run_resume
    from lethe.types import ForgetRequest

    with _workspace(home, show_progress=False) as ws:
        if resume:
            reports = run_resume(ws, crash_after)
            if not reports:
                console.print("no pending request")
        else:
            reports = [run_forget(ws, ForgetRequest(tuple(doc or ()), tuple(owner or ()), reason), crash_after)]
    for rep in reports:
        _print_receipt(rep)


def _print_receipt(rep) -> None:  # noqa: ANN001
    if rep.noop:
        console.print(f"request {rep.request_id} was already completed (level {rep.level}); nothing to do")
        return
    r = rep.receipt
    console.print(f"request {rep.request_id}: level [bold]{r['level']}[/bold]; {r['n_docs']} documents, "
                  f"{r['n_queries']} queries; removed from indexes {r['removed_from_indexes']}")
    if r["models_still_trained_on_data"]:
        console.print(f"[yellow]models still trained on this data: {r['models_still_trained_on_data']}")
    console.print_json(json.dumps(r["verification"]))


@app.command()
def verify(home: HomeOpt = None) -> None:
    """Re-check the ledger chain and that every forgotten document is gone from store and indexes."""
    from lethe.pipelines.forget import verify_workspace

    with _workspace(home, show_progress=False) as ws:
        result = verify_workspace(ws)
    console.print_json(json.dumps(result))
    if not result["ok"]:
        console.print("[red]verification FAILED")
        raise typer.Exit(1)
    console.print("[green]verification passed")


@app.command()
def demo(
    data: Annotated[str, typer.Option(help="a dataset with owner ids")] = "stackexchange-cardano",
    home: Annotated[Path | None, typer.Option(help="workspace (default: a fresh temp dir)")] = None,
) -> None:
    """Build BM25 + dense, evaluate, forget the user with the most answers, verify, compare."""
    from lethe.pipelines.demo import run_demo

    run_demo(data, home, console)


def main() -> None:
    """Console-script entry point: lethe errors print one clear line and exit 2."""
    try:
        app()
    except LetheError as exc:
        from rich.markup import escape

        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
