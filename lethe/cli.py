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
ViewOpt = Annotated[str | None, typer.Option(
    help="LLM rerankers: what the prompt shows of a passage, head | query (query-biased snippet); default: the "
         "view the model was trained with, else head")]
CalibrationOpt = Annotated[float, typer.Option(
    help="listwise LLM modes: contextual-calibration strength (0: off), subtracts the identifier prior of a "
         "content-free prompt")]


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
    model: Annotated[str | None, typer.Option(help="evaluate a registry bi-encoder NAME[@VERSION] (dense)")] = None,
    rerank: Annotated[str | None, typer.Option(
        help="rerank the top --depth with this registry reranker (cross-encoder, LLM, adapter; smollm2 = "
             "the packaged LLM)")] = None,
    rerank_mode: Annotated[str, typer.Option(help="LLM mode: full | sliding | first_token | qlm")] = "full",
    depth: Annotated[int, typer.Option(help="candidates handed to the reranker")] = 20,
    window: Annotated[int, typer.Option(help="sliding window size")] = 10,
    step: Annotated[int, typer.Option(help="sliding window step")] = 5,
    calibration: CalibrationOpt = 0.0,
    passage_view: ViewOpt = None,
) -> None:
    """Evaluate a retriever (or fusion, or retriever + reranker) on a dataset split; builds the indexes first."""
    from lethe.pipelines.evaluate import evaluate_retriever

    ds = _load(data, None, unknown_qrels, empty_docs)
    with _workspace(home) as ws:
        _ensure_indexed(ws, ds, dense=retriever != "bm25" or model is not None)
        if model is not None:
            retriever = ws.model_index(model).name
        qrels = _unforgotten(ws, ds.split_qrels(split))
        queries = {q: ds.queries[q].text for q in qrels if q in ds.queries}
        tag = f"{ds.name}.{split}.{retriever}"
        system = ws.retriever(retriever)
        if rerank is not None:
            from lethe.pipelines.rerank import load_reranker

            system = load_reranker(ws, rerank, rerank_mode, window, step, calibration=calibration,
                                   passage_view=passage_view).after(system, depth)
            tag += f".{rerank.replace('@', '-')}.{rerank_mode}"
            k = min(k, depth)
        agg, _, _ = evaluate_retriever(system, queries, qrels, measures.split(), k, out, tag)
    title = f"{retriever}{' >> ' + rerank if rerank else ''} on {ds.name}/{split} ({len(queries)} queries)"
    table = Table("measure", "value", title=title)
    for m, v in agg.items():
        table.add_row(m, f"{v:.4f}")
    console.print(table)
    if rerank is not None:
        console.print("reranker cost per query: " + ", ".join(
            f"{key} {val}" for key, val in system.stats.per_query(len(queries)).items()))
    console.print(f"run: {out / (tag + '.run')}  per-query: {out / (tag + '.perquery.tsv')}")


@app.command("rerank")
def rerank_cmd(
    run: Annotated[Path, typer.Option(help="TREC run file to rerank")],
    data: Annotated[str, typer.Option(help="dataset with the queries (and qrels, for figures)")],
    model: Annotated[str, typer.Option(help="registry reranker NAME[@VERSION]; smollm2 = the packaged LLM")],
    home: HomeOpt = None,
    mode: Annotated[str, typer.Option(help="LLM mode: full | sliding | first_token | qlm")] = "full",
    depth: Annotated[int, typer.Option(help="top candidates of each query to rerank")] = 20,
    window: Annotated[int, typer.Option(help="sliding window size")] = 10,
    step: Annotated[int, typer.Option(help="sliding window step")] = 5,
    calibration: CalibrationOpt = 0.0,
    passage_view: ViewOpt = None,
    split: Annotated[str, typer.Option(help="qrels split for the figures")] = "test",
    out: Annotated[Path | None, typer.Option(help="reranked run (default: RUN.reranked)")] = None,
    unknown_qrels: Annotated[str, typer.Option(help="error | keep | drop")] = "keep",
    empty_docs: Annotated[str, typer.Option(help="error | skip")] = "error",
) -> None:
    """Rerank a TREC run file; writes the new run and prints its figures and cost per query."""
    from lethe.data.loaders import load_trec_run
    from lethe.pipelines.evaluate import evaluate, write_trec_run
    from lethe.pipelines.rerank import load_reranker
    from lethe.ranking.base import rerank_run

    ds = _load(data, None, unknown_qrels, empty_docs)
    first = load_trec_run(run)
    queries = {q: ds.queries[q].text for q in first if q in ds.queries}
    missing = [q for q in first if q not in queries]
    if missing:
        raise LetheError(f"{run}: query {missing[0]!r} is not in {ds.name} ({len(missing)} unknown)")
    with _workspace(home) as ws:
        if not len(ws.store):
            ws.ingest(ds)
        reranker = load_reranker(ws, model, mode, window, step, calibration=calibration, passage_view=passage_view)
        new, stats = rerank_run(reranker, first, queries, depth)
    target = out or run.with_name(run.name + ".reranked")
    write_trec_run(new, target, tag=f"lethe-{model}-{mode}")
    console.print(f"reranked {len(new)} queries -> {target}")
    console.print("cost per query: " + ", ".join(f"{k} {v}" for k, v in stats.per_query(len(new)).items()))
    qrels = {q: r for q, r in ds.split_qrels(split).items() if q in new} if split in ds.qrels else {}
    if qrels:
        cut = {q: dict(sorted(d.items(), key=lambda x: -x[1])[:depth]) for q, d in first.items() if q in qrels}
        before, after = evaluate(cut, qrels, ["nDCG@10"])[0], evaluate(new, qrels, ["nDCG@10"])[0]
        console.print(f"nDCG@10 on {len(qrels)} judged queries: first stage {before['nDCG@10']:.4f} -> "
                      f"reranked {after['nDCG@10']:.4f}")


def _ensure_indexed(ws, ds, dense: bool = True) -> None:  # noqa: ANN001
    """Ingest ``ds`` and build BM25 (and dense) if the workspace has no index yet."""
    names = {i.ref.name for i in ws.indexes()}
    if not len(ws.store):
        ws.ingest(ds)
    if "bm25" not in names:
        ws.build_bm25()
    if dense and "dense" not in names:
        ws.build_dense()


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
    unlearn: Annotated[str | None, typer.Option(
        help="also unlearn every model trained on the data: retrain | grad_ascent | grad_diff | npo | pdu | "
             "relabel | reglu | fit")] = None,
    unlearn_steps: Annotated[int, typer.Option(help="optimiser steps of an approximate method")] = 10,
    unlearn_lr: Annotated[float, typer.Option(help="learning rate of an approximate method")] = 2e-5,
) -> None:
    """Remove documents (or every document of an owner) from the store, every index and cache —
    and, with --unlearn, from the weights of every model trained on them."""
    from lethe.pipelines.forget import forget as run_forget
    from lethe.pipelines.forget import resume as run_resume
    from lethe.types import ForgetRequest
    from lethe.unlearning.methods import UnlearnConfig, get_method

    if unlearn is not None:
        get_method(unlearn)  # a clear error before anything is touched
    cfg = UnlearnConfig(steps=unlearn_steps, lr=unlearn_lr)
    with _workspace(home, show_progress=False) as ws:
        if resume:
            reports = run_resume(ws, crash_after, cfg)
            if not reports:
                console.print("no pending request")
        else:
            request = ForgetRequest(tuple(doc or ()), tuple(owner or ()), reason)
            reports = [run_forget(ws, request, crash_after, unlearn, cfg)]
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
    console.print(f"models: {r['model_level']}")
    for m in r.get("unlearning", []):
        console.print(f"  {m['model']} -> {m.get('new', '-')}: {m.get('method', '-')} ({m.get('level')})")
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


train_app = typer.Typer(help="Train a teacher cross-encoder or a student embedder (with lineage).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


def _parse_fusion(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError as exc:
        raise LetheError(f"--fusion must look like 'ce=0.2,bm25=0.4,dense=0.4', got {text!r}") from exc


@train_app.command("cross-encoder")
def train_cross_encoder_cmd(
    data: Annotated[str, typer.Option(help="dataset with a training qrels split")],
    home: HomeOpt = None,
    split: Annotated[str, typer.Option(help="training split")] = "train",
    name: Annotated[str, typer.Option(help="registry name of the teacher")] = "teacher",
    base: Annotated[str, typer.Option(help="registry model to start from")] = "minilm",
    epochs: Annotated[float, typer.Option(help="passes over the training groups")] = 1.0,
    lr: Annotated[float, typer.Option(help="learning rate")] = 7e-5,
    negatives: Annotated[int, typer.Option(help="mined negatives per positive")] = 3,
    max_length: Annotated[int, typer.Option(help="tokens per (query, document) pair")] = 128,
    max_minutes: Annotated[float | None, typer.Option(help="stop training after this long")] = None,
    eval_split: Annotated[str | None, typer.Option(help="re-rank BM25 top-100 of this split after")] = None,
) -> None:
    """Train a cross-encoder teacher on a split's qrels with BM25 + dense (RRF) hard negatives."""
    from lethe.pipelines.train import progress_bar, rerank_eval, train_teacher, training_data
    from lethe.ranking import CETrainConfig

    ds = _load(data, None, "error", "error")
    with _workspace(home) as ws:
        _ensure_indexed(ws, ds)
        td = training_data(ws, ds, split)
        cfg = CETrainConfig(epochs=epochs, lr=lr, max_length=max_length,
                            max_seconds=max_minutes * 60 if max_minutes else None)
        on_step, close = progress_bar(f"training {name}")
        ref, losses = train_teacher(ws, td, name, base, cfg, negatives, on_step)
        close()
        console.print(f"registered [bold]{ref}[/bold] ({len(losses)} steps, final loss {losses[-1]:.4f})")
        if eval_split:
            figs = rerank_eval(ws, ds, str(ref), eval_split)
            console.print(f"BM25 top-100 re-ranked by {ref} on {eval_split}: {figs}")


@train_app.command("embedder")
def train_embedder_cmd(
    data: Annotated[str, typer.Option(help="dataset with a training qrels split")],
    teacher: Annotated[str, typer.Option(help="registry name of the teacher cross-encoder")],
    home: HomeOpt = None,
    recipe: Annotated[str, typer.Option(help="dse | lganna")] = "dse",
    split: Annotated[str, typer.Option(help="training split")] = "train",
    name: Annotated[str | None, typer.Option(help="registry name of the student")] = None,
    base: Annotated[str, typer.Option(help="registry bi-encoder to start from")] = "minilm",
    fusion: Annotated[str | None, typer.Option(help="teacher = fusion, e.g. 'ce=0.2,bm25=0.4,dense=0.4'")] = None,
    instruction: Annotated[str | None, typer.Option(help="lganna: task instruction on the query side")] = None,
    examples: Annotated[int, typer.Option(help="lganna: few-shot examples in the training prompt")] = 0,
    epochs: Annotated[float, typer.Option(help="passes over the mined examples")] = 1.0,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-5,
    negatives: Annotated[int, typer.Option(help="mined negatives per example")] = 7,
    ratio: Annotated[float, typer.Option(help="keep a negative only if t(q,n) < ratio * t(q,p)")] = 0.95,
    max_minutes: Annotated[float | None, typer.Option(help="stop training after this long")] = None,
    eval_split: Annotated[str, typer.Option(help="split to evaluate the new version on")] = "test",
) -> None:
    """Distil a teacher into a bi-encoder (DSE or LG-ANNA recipe), register it, evaluate it."""
    from lethe.embedding.train import EmbedTrainConfig
    from lethe.pipelines.train import model_eval, progress_bar, score_pools, train_embedder, training_data

    ds = _load(data, None, "error", "error")
    with _workspace(home) as ws:
        _ensure_indexed(ws, ds)
        td = training_data(ws, ds, split)
        cache_ref, _ = score_pools(ws, td, teacher, fusion=_parse_fusion(fusion))
        console.print(f"teacher scores cached as {cache_ref}")
        cfg = EmbedTrainConfig(recipe=recipe, epochs=epochs, lr=lr, instruction=instruction, n_examples=examples,
                               max_seconds=max_minutes * 60 if max_minutes else None)
        on_step, close = progress_bar(f"training {recipe}")
        ref, result, mined = train_embedder(ws, td, str(cache_ref), cfg, name or f"{recipe}-{ds.name}", base,
                                            negatives, ratio, on_step=on_step)
        close()
        console.print(f"registered [bold]{ref}[/bold]: {len(mined)} examples, {result.steps} steps, "
                      f"{result.seconds:.0f}s")
        figs = model_eval(ws, ds, str(ref), eval_split)
        console.print(f"{ref} on {ds.name}/{eval_split}: " + ", ".join(f"{k} {v:.4f}" for k, v in figs.items()))


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
