"""The ``lethe`` command line: index, search, eval, forget, verify, demo."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lethe.errors import LetheError

if TYPE_CHECKING:
    from lethe.pipelines.bulk import RayBulk
    from lethe.receipts import Receipt

app = typer.Typer(
    help="lethe: search that can forget. Build BM25 + dense indexes, search, evaluate, and remove "
    "documents or whole users from every index with a verifiable receipt. Add --debug to any command to see "
    "the traceback of an error.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

HomeOpt = Annotated[Path | None, typer.Option("--home", help="workspace directory ($LETHE_HOME or ./.lethe)")]
ViewOpt = Annotated[str | None, typer.Option(
    help="LLM rerankers: what the prompt shows of a passage, head | query (query-biased snippet); default: the "
         "view the model was trained with, else head")]


NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="fail at once if another process is changing the "
                                                             "workspace, instead of waiting for it")]
QRELS_CHOICES = ("warn", "error", "keep", "drop")
EMPTY_CHOICES = ("error", "skip")


def _workspace(home: Path | None, show_progress: bool = True, create: bool = True, no_wait: bool = False):  # noqa: ANN202
    """The workspace; ``create=False`` for commands that need one to exist already."""
    from lethe.pipelines.workspace import Workspace

    def tell(message: str) -> None:
        err_console.print(f"[yellow]{message}", highlight=False)

    return Workspace(home, show_progress=show_progress, create=create, wait=not no_wait, on_wait=tell)


def _choice(option: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """Refuse an option value outside ``choices`` (before anything is written)."""
    if value not in choices:
        raise LetheError(f"{option} {value!r} is not valid; choose one of {', '.join(choices)}")


def _load(data: str, owner_field: str | None, unknown_qrels: str, empty_docs: str):  # noqa: ANN202
    from lethe.data import load_dataset

    _choice("--unknown-qrels", unknown_qrels, QRELS_CHOICES)
    _choice("--empty-docs", empty_docs, EMPTY_CHOICES)
    return load_dataset(data, owner_field=owner_field, unknown_qrels=unknown_qrels, empty_docs=empty_docs)


@app.command()
def index(
    data: Annotated[str | None, typer.Option(
        help="dataset name under $LETHE_DATA, BEIR dir, JSONL or hf:org/name; leave out to rebuild the "
             "workspace's indexes from its store")] = None,
    home: HomeOpt = None,
    owner_field: Annotated[str | None, typer.Option(help="dotted metadata field with owner ids")] = None,
    dense: Annotated[bool, typer.Option(help="also build the dense index")] = True,
    dense_kind: Annotated[str, typer.Option(help="flat | ivf | hnsw")] = "flat",
    dense_backend: Annotated[str, typer.Option(
        help="where the dense vectors live: faiss (a file) | milvus (exact FLAT; Milvus Lite beside the index "
             "file, or the server of --milvus-uri); with --data")] = "faiss",
    milvus_uri: Annotated[str | None, typer.Option(
        help="--dense-backend milvus: a Milvus server URI (http://host:19530; token from $LETHE_MILVUS_TOKEN) "
             "or a Milvus Lite path ending in .db")] = None,
    encoder: Annotated[str, typer.Option(help="registry name of the bi-encoder")] = "minilm",
    encoder_backend: Annotated[str, typer.Option(
        help="run the bi-encoder with torch | onnx (ONNX Runtime, CPU) | onnx-int8 (int8 weights: fastest, "
             "vectors differ slightly); recorded in the dense index, which keeps its backend; needs "
             "`pip install 'lethe-ir[onnx]'` for the onnx ones")] = "torch",
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for encoding (ONNX Runtime intra-op threads; torch: torch.set_num_threads)")] = None,
    variant: Annotated[str, typer.Option(help="BM25 variant: lucene | okapi")] = "lucene",
    unknown_qrels: Annotated[str, typer.Option(
        help="judgments of documents outside the corpus: warn (keep, with a count) | error | keep | drop")] = "warn",
    empty_docs: Annotated[str, typer.Option(help="error | skip")] = "error",
    readmit: Annotated[list[str] | None, typer.Option(
        "--readmit", help="ingest this forgotten document again (repeatable; needs --reason; recorded in the ledger)")
    ] = None,
    reason: Annotated[str, typer.Option(help="why forgotten documents are re-admitted")] = "",
    no_wait: NoWaitOpt = False,
    ray: Annotated[bool, typer.Option(
        "--ray", help="tokenise and encode with Ray Data (a local Ray unless --ray-address); the indexes equal a "
                      "single-process build")] = False,
    ray_address: Annotated[str | None, typer.Option(
        help="with --ray: an existing Ray cluster (host:port, ray://host:port or auto); checked before any write")
    ] = None,
) -> None:
    """Ingest a dataset into the store and build BM25 (and dense) indexes over it; documents forgotten
    earlier are refused. Without --data, rebuild the existing indexes from the store."""
    from lethe.retrieval.bm25 import VARIANTS
    from lethe.retrieval.dense import KINDS

    _choice("--dense-kind", dense_kind, KINDS)
    _choice("--variant", variant, VARIANTS)
    _check_dense_backend(dense_backend, milvus_uri, dense_kind)
    bulk = _ray_bulk(ray, ray_address)
    if data is None:
        if encoder_backend != "torch":
            raise LetheError("--encoder-backend goes with --data: a rebuild runs each dense index on the "
                             "encoder backend it recorded")
        with _running(bulk), _workspace(home, create=False, no_wait=no_wait) as ws:
            names = ws.rebuild_indexes(**_bulk_hooks(bulk))
        console.print(f"rebuilt indexes {names} from the store of {ws.home}")
        return
    if dense:
        _check_new_encoder(home, encoder)
        encoder = _encoder_backend(encoder, encoder_backend, threads)
    ds = _load(data, owner_field, unknown_qrels, empty_docs)
    with _running(bulk), _workspace(home, no_wait=no_wait) as ws, ws.writing():
        if dense:
            ws.encoder(encoder, threads=threads)  # an unknown encoder fails before anything is ingested
        rep = ws.ingest(ds, readmit=readmit or (), reason=reason)
        console.print(f"ingested {rep.added} new documents ({rep.already_present} already stored), "
                      f"{rep.queries} queries into {ws.home}")
        for note in rep.notes:
            console.print(f"[yellow]{note}")
        if rep.readmitted:
            console.print(f"re-admitted {rep.readmitted} forgotten document(s) (recorded in the ledger)")
        hooks = _bulk_hooks(bulk)
        ws.build_bm25(variant=variant, tokenize=hooks.get("tokenize"))
        console.print("built index bm25" + (" (with Ray)" if bulk else ""))
        if dense:
            ws.build_dense(encoder=encoder, kind=dense_kind, backend=dense_backend, milvus_uri=milvus_uri,
                           doc_encoder=hooks.get("doc_encoder"))
            where = "" if dense_backend == "faiss" else f", in Milvus at {milvus_uri or ws.milvus_lite_path('dense')}"
            console.print(f"built index dense ({dense_kind}, encoder {encoder}{where})")


def _ray_bulk(ray: bool, address: str | None) -> RayBulk | None:
    """The Ray session of ``--ray`` (not started yet); an unreachable ``--ray-address`` fails here, before any write."""
    if not ray:
        if address is not None:
            raise LetheError("--ray-address needs --ray")
        return None
    from lethe.pipelines.bulk import RayBulk, check_ray_address

    if address is not None:
        check_ray_address(address)
    return RayBulk(address=address)


def _running(bulk: RayBulk | None) -> AbstractContextManager[object]:
    """``bulk`` as a context (Ray runs inside it), or a context that does nothing."""
    return bulk if bulk is not None else nullcontext()


def _bulk_hooks(bulk: RayBulk | None) -> dict[str, Any]:
    """The ``tokenize`` / ``doc_encoder`` arguments of the workspace's builds for ``bulk`` (none without)."""
    return {} if bulk is None else {"tokenize": bulk.tokenize, "doc_encoder": bulk.document_encoder}


def _encoder_backend(encoder: str, backend: str, threads: int | None) -> str:
    """``--encoder`` with ``--encoder-backend`` as the workspace names it (``minilm+onnx``; torch: as is),
    after checking the choice, that ONNX Runtime is installed and ``--threads``."""
    from lethe.embedding.onnx import BACKENDS, require_onnxruntime, with_backend

    _choice("--encoder-backend", backend, BACKENDS)
    if threads is not None and threads < 1:
        raise LetheError(f"--threads must be at least 1, not {threads}")
    if backend == "torch":
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        return encoder
    require_onnxruntime()
    return with_backend(encoder, backend)


def _check_dense_backend(backend: str, milvus_uri: str | None, kind: str) -> None:
    """``--dense-backend`` / ``--milvus-uri``: valid together, and a Milvus server that answers (before any write)."""
    from lethe.pipelines.workspace import DENSE_BACKENDS

    _choice("--dense-backend", backend, DENSE_BACKENDS)
    if backend == "faiss":
        if milvus_uri is not None:
            raise LetheError("--milvus-uri needs --dense-backend milvus")
        return
    if kind != "flat":
        raise LetheError(f"--dense-backend milvus is exact FLAT search; --dense-kind {kind!r} is a FAISS option "
                         "(leave it out)")
    from lethe.retrieval.milvus import check_installed, check_uri

    check_installed()
    if milvus_uri is not None:
        check_uri(milvus_uri)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="the query text")],
    home: HomeOpt = None,
    retriever: Annotated[str, typer.Option("--index", "-i", help="bm25 | dense | rrf | convex")] = "bm25",
    k: Annotated[int, typer.Option("-k", help="number of hits")] = 10,
) -> None:
    """Search the workspace's indexes."""
    with _workspace(home, show_progress=False, create=False) as ws:
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
    unknown_qrels: Annotated[str, typer.Option(
        help="judgments of documents outside the corpus: warn (keep, with a count) | error | keep | drop")] = "warn",
    empty_docs: Annotated[str, typer.Option(help="error | skip")] = "error",
    model: Annotated[str | None, typer.Option(help="evaluate a registry bi-encoder NAME[@VERSION] (dense)")] = None,
    rerank: Annotated[str | None, typer.Option(
        help="rerank the top --depth with this registry reranker (cross-encoder, LLM, adapter; smollm2 = "
             "the packaged LLM; auto = the one `lethe choose-reranker` chose on dev queries)")] = None,
    rerank_mode: Annotated[str, typer.Option(help="LLM mode: full | sliding | first_token | qlm")] = "full",
    depth: Annotated[int, typer.Option(help="candidates handed to the reranker")] = 20,
    window: Annotated[int, typer.Option(help="sliding window size")] = 10,
    step: Annotated[int, typer.Option(help="sliding window step")] = 5,
    passage_view: ViewOpt = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Evaluate a retriever (or fusion, or retriever + reranker) on a dataset split; builds the indexes first."""
    from lethe.pipelines.evaluate import evaluate_retriever
    from lethe.pipelines.rerank import LLM_MODES

    if rerank not in (None, "auto"):
        _choice("--rerank-mode", rerank_mode, LLM_MODES)
    ds = _load(data, None, unknown_qrels, empty_docs)
    ds.split_qrels(split)  # an unknown split fails before anything is written
    if model is None:
        _check_retriever(home, retriever)
    with _workspace(home, no_wait=no_wait) as ws:
        with ws.writing():
            _ensure_indexed(ws, ds, dense=retriever != "bm25" or model is not None)
            if model is not None:
                retriever = ws.model_index(model).name
        qrels = _unforgotten(ws, ds.split_qrels(split))
        queries = {q: ds.queries[q].text for q in qrels if q in ds.queries}
        tag = f"{ds.name}.{split}.{retriever}"
        system = ws.retriever(retriever)
        reranker, label, suffix = _eval_reranker(ws, rerank, rerank_mode, window, step, passage_view)
        if reranker is not None:
            system = reranker.after(system, depth)
            tag += suffix
            k = min(k, depth)
        agg, _, _ = evaluate_retriever(system, queries, qrels, measures.split(), k, out, tag)
    title = f"{retriever}{' >> ' + label if reranker else ''} on {ds.name}/{split} ({len(queries)} queries)"
    table = Table("measure", "value", title=title)
    for m, v in agg.items():
        table.add_row(m, f"{v:.4f}")
    console.print(table)
    if reranker is not None:
        console.print("reranker cost per query: " + ", ".join(
            f"{key} {val}" for key, val in system.stats.per_query(len(queries)).items()))
    console.print(f"run: {out / (tag + '.run')}  per-query: {out / (tag + '.perquery.tsv')}")


def _eval_reranker(ws, rerank: str | None, mode: str, window: int, step: int,  # noqa: ANN001, ANN202
                   passage_view: str | None):
    """``lethe eval --rerank``: (reranker or None, its name for the title, its suffix for the run's file name);
    ``auto`` is the one ``choose-reranker`` chose."""
    if rerank is None:
        return None, "", ""
    if rerank == "auto":
        from lethe.pipelines.choose import chosen_reranker

        spec = chosen_reranker(ws)
        if spec.model is None:
            err_console.print("the chosen reranker is none (no candidate beat the first stage on dev queries): "
                              "the first stage is evaluated as it is")
        return spec.load(ws, window=window, step=step), str(spec), "." + str(spec).replace("@", "-").replace(":", ".")
    from lethe.pipelines.rerank import load_reranker

    reranker = load_reranker(ws, rerank, mode, window, step, passage_view=passage_view)
    return reranker, rerank, f".{rerank.replace('@', '-')}.{mode}"


def _bars() -> tuple[Any, Any]:
    """A tqdm bar per named job, ``on_query(name, done, total)``, and a closer."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def on_query(name: str, done: int, total: int) -> None:
        if name not in bars:
            bars[name] = tqdm(total=total, desc=name, unit="query")
        bars[name].update(done - bars[name].n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return on_query, close


@app.command("choose-reranker")
def choose_reranker_cmd(
    data: Annotated[str, typer.Option(help="dataset (its dev or train queries tune the choice)")],
    candidates: Annotated[str, typer.Option(
        help="comma list of NAME[@VERSION][:MODE[:VIEW]] (e.g. cross-encoder,smollm2:qlm:query); none (no "
             "reranker) always competes")],
    home: HomeOpt = None,
    split: Annotated[str | None, typer.Option(help="tuning split (default: dev, else train; never test)")] = None,
    queries: Annotated[int, typer.Option(help="fixed-seed sample of tuning queries no candidate trained on (0: all)")]
    = 100,
    depth: Annotated[int, typer.Option(help="first-stage candidates handed to each reranker")] = 20,
    retriever: Annotated[str, typer.Option(help="first stage (an index of the workspace)")] = "bm25",
    unknown_qrels: Annotated[str, typer.Option(
        help="judgments of documents outside the corpus: warn (keep, with a count) | error | keep | drop")] = "warn",
    empty_docs: Annotated[str, typer.Option(help="error | skip")] = "error",
) -> None:
    """Measure candidate rerankers on tuning queries (never test) and record the best as the workspace's
    reranker (`lethe eval --rerank auto`)."""
    from lethe.pipelines.choose import RerankerSpec, choose_reranker

    specs = [RerankerSpec.parse(c) for c in candidates.split(",") if c.strip()]
    ds = _load(data, None, unknown_qrels, empty_docs)
    if retriever != "bm25":
        _check_retriever(home, retriever)
    with _workspace(home) as ws, ws.writing():
        _ensure_indexed(ws, ds, dense=retriever != "bm25")
        on_query, close = _bars()
        choice = choose_reranker(ws, ds, specs, split, queries, depth, retriever, on_query)
        close()
    table = Table("reranker", "nDCG@10", "vs first stage (95% CI)",
                  title=f"{ds.name}/{choice.split}: {choice.queries} tuning queries, {retriever} top {depth}")
    table.add_row("none (first stage)", f"{choice.first_stage:.4f}", "")
    for name, v in choice.ndcg10.items():
        lo, hi = choice.delta_ci[name]
        table.add_row(name, f"{v:.4f}", f"[{lo:+.4f}, {hi:+.4f}]")
    console.print(table)
    console.print(f"chosen: {choice.chosen} (lethe eval --rerank auto uses it)")


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
    passage_view: ViewOpt = None,
    split: Annotated[str, typer.Option(help="qrels split for the figures")] = "test",
    out: Annotated[Path | None, typer.Option(help="reranked run (default: RUN.reranked)")] = None,
    unknown_qrels: Annotated[str, typer.Option(
        help="judgments of documents outside the corpus: warn (keep, with a count) | error | keep | drop")] = "warn",
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
            for note in ws.ingest(ds).notes:
                err_console.print(f"[yellow]{note}", highlight=False)
        reranker = load_reranker(ws, model, mode, window, step, passage_view=passage_view)
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


def _check_new_encoder(home: Path | None, encoder: str) -> None:
    """A workspace not built yet knows only the default encoder (checked before it is created)."""
    from lethe.pipelines.workspace import DEFAULT_ENCODER, default_home

    where = home or default_home()
    if where.exists() and not where.is_dir():
        return  # the workspace refuses it, naming it
    if not (where / "store.db").is_file() and encoder.split("@")[0] != DEFAULT_ENCODER:
        raise LetheError(f"--encoder {encoder!r} is unknown: {where} holds no workspace yet, and a new one knows "
                         f"only {DEFAULT_ENCODER!r}")


def _check_retriever(home: Path | None, retriever: str) -> None:
    """``--retriever`` is bm25, dense, a fusion or an index the workspace has (checked before any write)."""
    from lethe.pipelines.workspace import RETRIEVERS, default_home

    if retriever in RETRIEVERS:
        return
    names: list[str] = []
    if ((home or default_home()) / "store.db").is_file():
        with _workspace(home, show_progress=False, create=False) as ws:
            names = [i.ref.name for i in ws.indexes()]
    _choice("--retriever", retriever, [*RETRIEVERS, *names])


def _ensure_indexed(ws, ds, dense: bool = True) -> None:  # noqa: ANN001
    """Ingest ``ds`` and build BM25 (and dense) if the workspace has no index yet."""
    names = {i.ref.name for i in ws.indexes()}
    if not len(ws.store):
        for note in ws.ingest(ds).notes:
            err_console.print(f"[yellow]{note}", highlight=False)
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
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="QUERY:DOC, a relevance judgement to forget while the query and document stay "
                        "(repeatable; e.g. a withdrawn click)")] = None,
    reason: Annotated[str, typer.Option(help="why (kept in the receipt)")] = "",
    resume: Annotated[bool, typer.Option("--resume", help="finish requests interrupted by a crash")] = False,
    retry: Annotated[str | None, typer.Option("--retry", help="run a failed or incomplete request ID again")] = None,
    skip_unknown: Annotated[bool, typer.Option(
        "--skip-unknown", help="forget the known ids and list unknown ones in the receipt as not found "
                               "(default: unknown ids are an error and nothing changes)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print each receipt as one JSON object")] = False,
    crash_after: Annotated[str | None, typer.Option(hidden=True, help="test hook: crash after a step")] = None,
    unlearn: Annotated[str, typer.Option(
        help="what to do with models trained on the data: auto (default: the cheapest route to a verified "
             "level; sharded retrain, or an approximate method checked by an audit, retraining when it fails) | "
             "sharded | retrain | grad_ascent | grad_diff | npo | pdu | relabel | reglu | fit | ofmu | laf (no labels "
             "needed: works on a bi-encoder whose training pairs are unknown) | none (leave "
             "them; the receipt lists them as still trained on the data)")] = "auto",
    unlearn_steps: Annotated[int | None, typer.Option(help="optimiser steps of an approximate method")] = None,
    unlearn_lr: Annotated[float | None, typer.Option(
        help="learning rate of an approximate method (before the method's own scale)")] = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """Remove documents (or every document of an owner) from the store, every index and cache —
    and, with --unlearn, from the weights of every model trained on them. Exits 0 only when the
    requested level was reached."""
    from lethe.pipelines.unlearn import PIPELINE_METHODS
    from lethe.unlearning.base import UnlearnConfig

    _choice("--unlearn", unlearn, (*PIPELINE_METHODS, "none"))  # a clear error before anything is touched
    if sum([resume, retry is not None, bool(doc or owner or label)]) != 1:
        raise LetheError("give exactly one of: --doc/--owner/--label ids, --resume, or --retry ID")
    labels = [_label_pair(x) for x in label or ()]
    defaults = UnlearnConfig()
    cfg = UnlearnConfig(steps=unlearn_steps or defaults.steps, lr=unlearn_lr or defaults.lr)
    with _workspace(home, show_progress=False, create=False, no_wait=no_wait) as ws:
        reports = _run_forget(ws, doc, owner, reason, resume, retry, skip_unknown, crash_after,
                              None if unlearn == "none" else unlearn, cfg, labels)
    for rep in reports:
        _print_receipt(rep, as_json)
    unfinished = [r for r in reports if not r.reached]
    if unfinished:
        for rep in unfinished:
            err_console.print(f"[red]request {rep.request_id} ended at level {rep.level!r}, short of what was asked; "
                              f"finish it with `lethe forget --retry {rep.request_id}`", highlight=False)
        raise typer.Exit(1)


def _label_pair(text: str) -> tuple[str, str]:
    """``QUERY:DOC`` -> (query id, doc id); the first colon splits (document ids may hold colons)."""
    q, sep, d = text.partition(":")
    if not sep or not q or not d:
        raise LetheError(f"--label {text!r}: expected QUERY:DOC (a query id, a colon, a document id)")
    return q, d


def _run_forget(ws, doc, owner, reason, resume, retry, skip_unknown, crash_after, unlearn, cfg,  # noqa: ANN001
                labels=()) -> list:  # noqa: ANN001
    """The receipts of one ``lethe forget`` call, through the front door (``Workspace.forget`` & co.)."""
    if retry is not None:
        return [ws.retry_forget(retry, cfg, crash_after)]
    if resume:
        receipts = ws.resume_forgets(cfg, crash_after)
        failed = ws.ledger.failed_requests()
        if not receipts:
            console.print("no pending request")
        if failed:
            err_console.print(f"[yellow]{len(failed)} failed request(s) are not resumed; run them again with "
                              f"`lethe forget --retry ID`: {failed}", highlight=False)
        return receipts
    return [ws.forget(doc or (), owner or (), reason, unlearn, skip_unknown, cfg, crash_after, labels)]


def _print_receipt(rep: Receipt, as_json: bool = False) -> None:
    if as_json:
        console.print_json(json.dumps({**rep.raw, "request_id": rep.request_id, "level": rep.level,
                                       "noop": rep.noop, "entry_hash": rep.chain_head}))
        return
    if rep.noop:
        why = rep.note or "was already completed"
        console.print(f"request {rep.request_id}: {why} (level {rep.level}); nothing to do")
        return
    r = rep.raw
    found = f"; {r['not_found']} not found" if r.get("not_found") else ""
    labels = f", {r['n_labels']} labels" if r.get("n_labels") else ""
    console.print(f"request {rep.request_id}: level [bold]{rep.level}[/bold]; {r['n_docs']} documents, "
                  f"{r['n_queries']} queries{labels}{found}; removed from indexes {r['removed_from_indexes']}")
    if rep.still_trained_on_data:
        console.print(f"[yellow]models still trained on this data: {list(rep.still_trained_on_data)}")
    console.print(f"models: {rep.model_level}")
    for m in r.get("unlearning", []):
        audit = m.get("audit") or {}
        checked = f", audit {audit['verdict']}" if audit else ""
        escalated = f", after {m['escalated_from']} ({m['why_escalated']})" if m.get("escalated_from") else ""
        console.print(f"  {m['model']} -> {m.get('new', '-')}: {m.get('route', m.get('method', '-'))} "
                      f"([bold]{m.get('level')}[/bold]{checked}{escalated})")
    console.print_json(json.dumps(r["verification"]))
    console.print(f"chain head: {rep.chain_head} (keep it outside the workspace; `lethe verify --head` checks it)")


@app.command()
def verify(
    home: HomeOpt = None,
    head: Annotated[str | None, typer.Option(help="a chain head kept outside the workspace (from a receipt)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print only the result, as one JSON object")] = False,
    no_trace: Annotated[bool, typer.Option(
        "--no-trace", help="skip the scan of every file for forgotten ids and text (it reads every byte)")] = False,
    no_wait: NoWaitOpt = False,
) -> None:
    """Re-check the ledger chain (keyed hashes, head file), that every forgotten document is gone
    from store and indexes, and that no forgotten id or text is left in any file of the workspace
    (a scan of every byte, with keyed hashes only); waits for a running writer so it checks one
    committed state."""
    with _workspace(home, show_progress=False, create=False, no_wait=no_wait) as ws:
        checked = ws.verify(head=head, trace=not no_trace)
    result = checked.raw
    console.print_json(json.dumps(result))
    if as_json:
        raise typer.Exit(0 if checked.ok else 1)
    trace = result.get("trace")
    if trace is not None:
        console.print(f"trace scan: {trace['files_scanned']} files, {trace['bytes_scanned'] / 1e6:.1f} MB in "
                      f"{trace['seconds']:.1f}s; " + (f"[red]forgotten data found in {trace['found']}"
                                                       if trace["found"] else "no forgotten id or text found"),
                      highlight=False)
    if not checked.ok:
        for problem in checked.problems:
            err_console.print(f"[red]{problem}", highlight=False)
        console.print("[red]verification FAILED" + (f"; to finish: {'; '.join(result['to_finish'])}"
                                                    if result["to_finish"] else ""))
        raise typer.Exit(1)
    console.print("[green]verification passed")


train_app = typer.Typer(help="Train a teacher cross-encoder, a student embedder or an SAE (with lineage).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


ShardsOpt = Annotated[int, typer.Option(
    help="train K SISA shards by owner (K >= 2), served as one merged model: `lethe forget` then retrains only "
         "the shards that held the data (exact)")]
ShardLrOpt = Annotated[float, typer.Option(help="a shard's learning rate, as a multiple of --lr")]
HoldoutOpt = Annotated[float, typer.Option(
    help="fraction of training queries held out and registered with the model as the unlearning audit's "
         "non-member reference and retain probe (0: none; the audit cannot then verify approximate unlearning)")]

ElrOpt = Annotated[float, typer.Option(
    help="early-learning regularisation weight for noisy labels (clicks, a teacher's picks): 0 = off; tune it on "
         "dev queries (benchmarks/elr.py); embedder: the contrastive recipe only")]


ElrSelectOpt = Annotated[float | None, typer.Option(
    help="with --elr-lam: learn no label that the model, before training, gives less than this probability among "
         "its candidates (a wrong positive is implausible to a pretrained retriever); 0 = learn every label "
         "(default 0.05)")]


def _trained(ref, losses: list[float]) -> str:  # noqa: ANN001
    """How a model was trained, in a few words."""
    sharded = (ref.manifest.get("extra", {}) or {}).get("sharded")
    if sharded:
        return f"{sharded['k']} shards, merged"
    return f"{len(losses)} steps, final loss {losses[-1]:.4f}" if losses else "no step"


def _elr(lam: float, select: float | None) -> Any:
    """``--elr-lam`` / ``--elr-select`` (default 0.05 with ELR): ELR's settings (targets started at the untrained
    model's predictions), or None for plain training (lam 0, where ``--elr-select`` is refused, not ignored)."""
    from lethe.training.elr import ELRConfig

    if select is not None and not lam:
        raise LetheError("--elr-select chooses the labels ELR learns: it needs --elr-lam > 0")
    select = 0.05 if select is None else select

    if lam < 0:
        raise LetheError(f"--elr-lam must be >= 0 (0: no ELR), got {lam}")
    if not 0 <= select < 1:
        raise LetheError(f"--elr-select must be in [0, 1), got {select}")
    return ELRConfig(lam=lam, start="model", select=select) if lam else None


def _distill_weight(teacher: str | None, weight: float) -> float:
    """``--distill``'s weight when ``--distill-from`` names a teacher, else 0 (checked: in (0, 1])."""
    if teacher is None:
        return 0.0
    if not 0 < weight <= 1:
        raise LetheError(f"--distill must be in (0, 1] (1: the teacher's margins only), got {weight}")
    return weight


def _with_doc2query(ws: Any, data: Any, n: int) -> Any:
    """``--doc2query N``: the training data plus the queries the packaged LLM writes for ``n`` unjudged documents."""
    from lethe.pipelines.doc2query import with_doc2query
    from lethe.pipelines.rerank import ensure_llm

    more = with_doc2query(ws, data, n, str(ensure_llm(ws)))
    console.print(f"doc2query: {len(more.queries) - len(data.queries)} generated queries")
    return more


def _check_teacher(ws: Any, teacher: str) -> None:
    """``--distill-from`` must name a registered cross-encoder."""
    kind = ws.registry.get(teacher).kind
    if kind != "cross_encoder":
        raise LetheError(f"--distill-from {teacher} is a {kind}; give a registered cross-encoder")


def _teacher_cache(ws: Any, data: Any, teacher: str) -> str:
    """Score the training pools with ``teacher`` (a registered cross-encoder) and return the cache's version."""
    from lethe.pipelines.train import score_pools

    console.print(f"scoring the training pools with {teacher} ...")
    ref, _ = score_pools(ws, data, teacher)
    return str(ref)


def _one_pass_view(one_pass: bool, passage_view: str | None) -> str:
    """``--passage-view`` of ``train cross-encoder``: a one-pass model's (default ``query``); a pair model's is
    always ``head``."""
    from lethe.ranking.prompts import PASSAGE_VIEWS

    if not one_pass:
        if passage_view is not None:
            raise LetheError("--passage-view applies to --one-pass models (a pair model reads each document's head)")
        return "head"
    _choice("--passage-view", passage_view or "query", PASSAGE_VIEWS)
    return passage_view or "query"


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
    lr: Annotated[float, typer.Option(help="learning rate")] = 3e-5,
    negatives: Annotated[int, typer.Option(help="mined negatives per positive")] = 7,
    max_length: Annotated[int | None, typer.Option(
        help="tokens per (query, document) pair (default 128); with --one-pass, per candidate (default 56)")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="stop training after this long")] = None,
    eval_split: Annotated[str | None, typer.Option(help="re-rank BM25 top-100 of this split after")] = None,
    one_pass: Annotated[bool, typer.Option(
        "--one-pass", help="rank each query's whole candidate list in one forward pass (the one-pass list head; "
                           "each training list is a positive and its --negatives)")] = False,
    passage_view: Annotated[str | None, typer.Option(
        help="--one-pass: what the model reads of each candidate, head | query (query-biased snippet; the "
             "default, measured better on SciFact)")] = None,
    elr_lam: ElrOpt = 0.0,
    elr_select: ElrSelectOpt = None,
    distill_from: Annotated[str | None, typer.Option(
        help="a registered cross-encoder (e.g. the one-pass list model) whose scores of the training pools are "
             "distilled with MarginMSE (kept as a score cache, NAME-scores)")] = None,
    distill: Annotated[float, typer.Option(
        help="with --distill-from: weight of MarginMSE against the labels' listwise loss (1: margins only)")] = 0.5,
    doc2query: Annotated[int, typer.Option(
        help="also train on queries the packaged LLM writes for this many unjudged documents (kept in the store, "
             "forgotten with their document; resumable)")] = 0,
    shards: ShardsOpt = 0,
    shard_lr_scale: ShardLrOpt = 5.0,
    audit_holdout: HoldoutOpt = 0.15,
    no_wait: NoWaitOpt = False,
) -> None:
    """Train a cross-encoder teacher on a split's qrels with BM25 + dense (RRF) hard negatives."""
    from lethe.pipelines.train import progress_bar, rerank_eval, train_teacher, training_data
    from lethe.ranking import CETrainConfig

    view = _one_pass_view(one_pass, passage_view)
    weight = _distill_weight(distill_from, distill)
    elr = _elr(elr_lam, elr_select)
    if doc2query < 0:
        raise LetheError(f"--doc2query must be >= 0, got {doc2query}")
    ds = _load(data, None, "error", "error")
    with _workspace(home, no_wait=no_wait) as ws, ws.writing():
        if distill_from:
            _check_teacher(ws, distill_from)
        _ensure_indexed(ws, ds)
        td, reference = training_data(ws, ds, split).hold_out(audit_holdout)
        if doc2query:
            td = _with_doc2query(ws, td, doc2query)
        cfg = CETrainConfig(epochs=epochs, lr=lr, max_length=max_length or (56 if one_pass else 128),
                            elr=elr, listwise=one_pass, passage_view=view, distill=weight,
                            max_seconds=max_minutes * 60 if max_minutes else None)
        cache = _teacher_cache(ws, td, distill_from) if distill_from else None
        on_step, close = progress_bar(f"training {name}")
        ref, losses = train_teacher(ws, td, name, base, cfg, negatives, on_step, reference, shards, shard_lr_scale,
                                    cache)
        close()
        console.print(f"registered [bold]{ref}[/bold] ({_trained(ref, losses)})")
        if eval_split:
            figs = rerank_eval(ws, ds, str(ref), eval_split)
            console.print(f"BM25 top-100 re-ranked by {ref} on {eval_split}: {figs}")


@train_app.command("embedder")
def train_embedder_cmd(
    data: Annotated[str, typer.Option(help="dataset with a training qrels split")],
    teacher: Annotated[str | None, typer.Option(
        help="registry name of the teacher cross-encoder (dse, lganna)")] = None,
    home: HomeOpt = None,
    recipe: Annotated[str, typer.Option(
        help="dse | lganna (distil the teacher) | contrastive (InfoNCE on the qrels, no teacher)")] = "dse",
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
    elr_lam: ElrOpt = 0.0,
    elr_select: ElrSelectOpt = None,
    shards: ShardsOpt = 0,
    shard_lr_scale: ShardLrOpt = 5.0,
    audit_holdout: HoldoutOpt = 0.15,
    no_wait: NoWaitOpt = False,
) -> None:
    """Train a bi-encoder (distil a teacher with the DSE or LG-ANNA recipe, or contrastive on the qrels),
    register it, evaluate it."""
    from lethe.embedding.train import EmbedTrainConfig
    from lethe.pipelines.train import model_eval, progress_bar, score_pools, train_embedder, training_data

    _choice("--recipe", recipe, ("dse", "lganna", "contrastive"))
    if elr_lam and recipe != "contrastive":
        raise LetheError(f"--elr-lam regularises training on labels: the contrastive recipe only, not {recipe!r} "
                         "(dse and lganna follow a teacher's scores)")
    if (teacher is None) != (recipe == "contrastive"):
        raise LetheError("--teacher is needed by the dse and lganna recipes, and not used by contrastive")
    ds = _load(data, None, "error", "error")
    with _workspace(home, no_wait=no_wait) as ws, ws.writing():
        _ensure_indexed(ws, ds)
        td, reference = training_data(ws, ds, split).hold_out(audit_holdout)
        cache = None
        if teacher is not None:
            cache_ref, _ = score_pools(ws, td, teacher, fusion=_parse_fusion(fusion))
            console.print(f"teacher scores cached as {cache_ref}")
            cache = str(cache_ref)
        cfg = EmbedTrainConfig(recipe=recipe, epochs=epochs, lr=lr, instruction=instruction, n_examples=examples,
                               max_seconds=max_minutes * 60 if max_minutes else None, elr=_elr(elr_lam, elr_select))
        on_step, close = progress_bar(f"training {recipe}")
        ref, result, mined = train_embedder(ws, td, cache, cfg, name or f"{recipe}-{ds.name}", base,
                                            negatives, ratio, on_step=on_step, reference=reference, shards=shards,
                                            shard_lr_scale=shard_lr_scale)
        close()
        console.print(f"registered [bold]{ref}[/bold]: {len(mined)} examples, {result.seconds:.0f}s "
                      f"({_trained(ref, result.losses)})")
        figs = model_eval(ws, ds, str(ref), eval_split)
        console.print(f"{ref} on {ds.name}/{eval_split}: " + ", ".join(f"{k} {v:.4f}" for k, v in figs.items()))


@train_app.command("sae")
def train_sae_cmd(
    model: Annotated[str, typer.Option(help="registry name of the bi-encoder whose document embeddings it reads")],
    home: HomeOpt = None,
    sample: Annotated[int, typer.Option(help="store documents sampled (seeded) to fit it on")] = 2000,
    steps: Annotated[int, typer.Option(help="full-batch optimiser steps")] = 400,
    expansion: Annotated[int, typer.Option(help="dictionary size as a multiple of the embedding size")] = 4,
    no_wait: NoWaitOpt = False,
) -> None:
    """Fit a sparse autoencoder on a bi-encoder's document embeddings, registered with lineage: `lethe forget
    --unlearn sae` reads its features, and a forget request refits it without the forgotten documents."""
    from lethe.pipelines.sae import train_sae
    from lethe.unlearning.sae import SAEConfig

    if steps < 1 or expansion < 1:
        raise LetheError(f"--steps and --expansion must be at least 1, got {steps} and {expansion}")
    with _workspace(home, no_wait=no_wait) as ws, ws.writing():
        with console.status(f"fitting an SAE on {model}'s embeddings of up to {sample} documents"):
            ref = train_sae(ws, model, sample, SAEConfig(sae_steps=steps, expansion=expansion))
        extra = ref.manifest.get("extra", {}).get("sae", {})
        console.print(f"registered [bold]{ref}[/bold]: {extra.get('dictionary')} features, fitted on "
                      f"{extra.get('docs')} documents embedded by {extra.get('model')}")


@app.command()
def demo(
    data: Annotated[str, typer.Option(help="a dataset with owner ids")] = "stackexchange-cardano",
    home: Annotated[Path | None, typer.Option(help="workspace (default: a fresh temp dir)")] = None,
) -> None:
    """Build BM25 + dense, evaluate, forget the user with the most answers, verify, compare."""
    from lethe.pipelines.demo import run_demo

    run_demo(data, home, console)


@app.command()
def serve(
    home: Annotated[Path, typer.Option(help="service home: keys, jobs and one workspace per tenant")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    job_process: Annotated[bool, typer.Option(help="run forget jobs in a child process, off the server's "
                                                    "interpreter (searches stay fast during a job)")] = True,
) -> None:
    """Serve search, documents and forget jobs over HTTP (OpenAPI at /docs); keys: `lethe keys add`."""
    try:
        import uvicorn

        from lethe.serve.app import create_app
    except ImportError as exc:
        from lethe.errors import MissingDependency

        raise MissingDependency(f"`lethe serve` needs FastAPI and uvicorn: pip install 'lethe-ir[serve]' "
                                f"({exc})") from exc
    uvicorn.run(create_app(home, job_process=job_process), host=host, port=port, log_level="info")


keys_app = typer.Typer(help="API keys of a `lethe serve` home.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("add")
def keys_add(
    home: Annotated[Path, typer.Option(help="service home")],
    tenant: Annotated[str, typer.Option(help="tenant (a new one starts with an empty workspace)")],
    role: Annotated[str, typer.Option(help="reader | editor | admin")] = "reader",
) -> None:
    """Create an API key; it is printed alone on the last line and only its hash is stored."""
    from lethe.serve.keys import ROLES, KeyStore, check_tenant

    check_tenant(tenant)
    _choice("--role", role, ROLES)
    if home.exists() and not home.is_dir():
        raise LetheError(f"--home {home} is a file, not a service home")
    with _workspace(home / "tenants" / tenant, show_progress=False):
        pass  # creates the tenant's workspace (and its ledger key beside it) if it is new
    store = KeyStore(home)
    try:
        key = store.add(tenant, role)
    finally:
        store.close()
    console.print(f"new {role} key for tenant {tenant!r} (shown once; only its hash is stored):")
    print(key)


def main() -> None:
    """Console-script entry point: every error prints one clear line and exits 2 (``--debug``: traceback)."""
    debug = "--debug" in sys.argv[1:]
    sys.argv = [a for a in sys.argv if a != "--debug"]
    try:
        app()
    except LetheError as exc:
        _fail(str(exc), exc, debug)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except Exception as exc:  # anything unforeseen: one line, the traceback only with --debug
        _fail(f"{type(exc).__name__}: {exc} (an unexpected error; run with --debug for the traceback)", exc, debug)


def _fail(message: str, exc: BaseException, debug: bool) -> None:
    from rich.markup import escape

    if debug:
        raise exc
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    rest = message.strip().splitlines()[1:]
    err_console.print(f"[red]error:[/red] {escape(first)}", highlight=False)
    for line in rest:  # multi-problem data errors list one problem per line
        err_console.print(escape(line), highlight=False)
    sys.exit(2)


if __name__ == "__main__":
    main()
