"""The HTTP service: FastAPI over one workspace per tenant (``<home>/tenants/<tenant>``).

Searches run while forget jobs run: a tenant's reader keeps its indexes in memory and reloads an index
when its file changes (files are replaced atomically), and every hit is checked against the store
before it is returned, so a document whose forget job is ``done`` is never served. The worker takes
the tenant's reader lock once, to drop the cached indexes, before it reports a job ``done``: no search
that was in flight then can still return the document. One worker runs forget jobs one at a time
(the workspace lock makes a second writer wait anyway).
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (closures) at runtime
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from lethe.errors import LetheError
from lethe.pipelines.workspace import Workspace
from lethe.serve.evaluation import MEASURE, Evaluator
from lethe.serve.jobs import Job, JobStore, Worker
from lethe.serve.keys import KeyStore, Principal
from lethe.serve.metrics import Metrics
from lethe.serve.runner import Outcome, record_figure, run_forget_job, run_verify, watch_parent
from lethe.types import Doc, ForgetRequest

MAX_QUERY_CHARS = 2000
MAX_K = 1000
MAX_DOCS = 1000


class Strict(BaseModel):
    """Request bodies refuse unknown fields (the error names them)."""

    model_config = ConfigDict(extra="forbid")


class RerankIn(Strict):
    model: str = Field(min_length=1)
    mode: str = "qlm"
    depth: int = Field(20, ge=1, le=100)


class SearchIn(Strict):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(10, ge=1, le=MAX_K)
    retriever: str = "bm25"
    rerank: RerankIn | None = None


class DocIn(Strict):
    id: str = Field(min_length=1, max_length=512, pattern=r"^\S+$")
    text: str = Field(min_length=1)
    title: str = ""
    owner: str | None = Field(None, min_length=1)


class DocumentsIn(Strict):
    documents: list[DocIn] = Field(min_length=1, max_length=MAX_DOCS)


class ForgetIn(Strict):
    doc_ids: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=100_000)
    owners: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=10_000)
    reason: str = Field("", max_length=2000)
    #: as ``lethe forget --unlearn``: ``auto`` (default) takes the cheapest route to a verified level for
    #: every model trained on the data; ``none`` leaves the models (they stay listed as trained on it)
    unlearn: Literal["auto", "sharded", "retrain", "grad_ascent", "grad_diff", "npo", "pdu", "relabel", "reglu", "fit",
                     "none"] = "auto"


class TenantReader:
    """One tenant's read side: a workspace, its indexes cached by file stamp, behind one lock."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.lock = threading.Lock()
        self._ws: Workspace | None = None
        self._indexes: dict[str, tuple[tuple[int, int], Any]] = {}
        self._rerankers: dict[tuple[str, str], Any] = {}

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            self._ws = Workspace(self.home, show_progress=False, create=False)
        return self._ws

    def index(self, name: str) -> Any:
        """The index ``name``, reloaded when its file was replaced."""
        path = self.ws.index_path(name)
        stat = path.stat() if path.exists() else None
        stamp = (stat.st_mtime_ns, stat.st_size) if stat else (0, 0)
        cached = self._indexes.get(name)
        if cached is None or cached[0] != stamp:
            self._indexes[name] = (stamp, self.ws.load_index(name))
        return self._indexes[name][1]

    def retriever(self, name: str) -> Any:
        from lethe.retrieval.fusion import FusionRetriever

        names = {i.ref.name for i in self.ws.indexes()}
        if name in ("rrf", "convex"):
            return FusionRetriever([self.index("bm25"), self.index("dense")], method=name, depth=100,
                                   names=["bm25", "dense"])
        if name not in names:
            raise HTTPException(422, f"retriever: unknown {name!r}; choose one of "
                                     f"{sorted(names | ({'rrf', 'convex'} if {'bm25', 'dense'} <= names else set()))}")
        return self.index(name)

    def reranker(self, model: str, mode: str) -> Any:
        from lethe.pipelines.rerank import load_reranker

        key = (model, mode)
        if key not in self._rerankers:
            self._rerankers[key] = load_reranker(self.ws, model, mode)
        return self._rerankers[key]

    def invalidate(self) -> None:
        """Drop every cached index (after a forget job)."""
        self._indexes.clear()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None


class Service:
    """The state behind the app: keys, jobs, the worker and one reader per tenant.

    ``job_process=True`` runs forget jobs in one long-lived child process (see :mod:`lethe.serve.runner`).
    """

    def __init__(self, home: Path, job_process: bool = False) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.keys = KeyStore(self.home)
        self.jobs = JobStore(self.home)
        self.metrics = Metrics()
        self.evaluator = Evaluator()
        self.readers: dict[str, TenantReader] = {}
        self._readers_lock = threading.Lock()
        self.job_process = job_process
        self._executor: ProcessPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self.worker = Worker(self.jobs, self.run_job)

    def tenant_home(self, tenant: str) -> Path:
        return self.home / "tenants" / tenant

    def reader(self, tenant: str) -> TenantReader:
        with self._readers_lock:
            if tenant not in self.readers:
                self.readers[tenant] = TenantReader(self.tenant_home(tenant))
            return self.readers[tenant]

    def read(self, tenant: str, fn: Callable[[Workspace], Any]) -> Any:
        """``fn(workspace)`` on the tenant's read side, under its reader lock."""
        reader = self.reader(tenant)
        with reader.lock:
            return fn(reader.ws)

    def run_job(self, job: Job, request: dict[str, Any]) -> Outcome:
        """Run one forget job (in the child process or this thread), then drop the tenant's cached indexes."""
        args = (str(self.home), job.tenant, job.id, request)
        outcome = self._in_child(*args) if self.job_process else run_forget_job(*args)
        reader = self.reader(job.tenant)
        with reader.lock:  # no search in flight can still hold the forgotten documents
            reader.invalidate()
        return outcome

    def _in_child(self, *args: Any) -> Outcome:
        try:
            return self._call(run_forget_job, *args)
        except BrokenProcessPool:
            self._executor = None  # the child died: a new one resumes the request from its journal
        try:
            return self._call(run_forget_job, *args)
        except BrokenProcessPool as exc:
            self._executor = None
            return "failed", None, None, f"the job's process died twice ({exc}); submit the request again"

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the job process (started on first use; it exits if this server dies)."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=watch_parent, initargs=(os.getpid(),))
            executor = self._executor
        return executor.submit(fn, *args).result()

    def verify(self, tenant: str) -> dict[str, Any]:
        """Verify a tenant's workspace (in the job process when there is one: it rebuilds every index)."""
        if self.job_process:
            return self._call(run_verify, str(self.home), tenant)
        return run_verify(str(self.home), tenant)

    def record_figure(self, ws: Workspace, tenant: str, label: str, first_only: bool = False) -> None:
        """Add a point to the tenant's before/after chart."""
        record_figure(self.jobs, self.evaluator, ws, tenant, label, first_only)

    def close(self) -> None:
        self.worker.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for r in self.readers.values():
            r.close()
        self.keys.close()
        self.jobs.close()


def _principal(service: Service, authorization: str | None) -> Principal:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>`",
                            headers={"WWW-Authenticate": "Bearer"})
    who = service.keys.lookup(authorization.removeprefix("Bearer ").strip())
    if who is None:
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return who


def create_app(home: Path, start_worker: bool = True, job_process: bool = False) -> FastAPI:
    """The FastAPI app serving the tenants under ``home`` (``job_process``: forget jobs in a child process)."""
    service = Service(home, job_process=job_process)
    app = FastAPI(title="lethe", description="Search that can forget: search, add documents, forget with a "
                  "receipt.", version="0.1.0")
    app.state.service = service

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:  # the web page: search, forget, jobs, receipts, verify (no build step, no CDN)
        return FileResponse(Path(__file__).parent / "static" / "index.html")

    def role(needed: str) -> Callable[..., Principal]:
        def check(authorization: Annotated[str | None, Header()] = None) -> Principal:
            who = _principal(service, authorization)
            if not who.may(needed):
                raise HTTPException(403, f"this key's role {who.role!r} may not do this (needs {needed!r})")
            return who
        return check

    _install_handlers(app, service)
    _routes_read(app, service, role)
    _routes_write(app, service, role)
    _routes_admin(app, service, role)
    if start_worker:
        app.router.on_startup.append(service.worker.start)
    app.router.on_shutdown.append(service.close)
    return app


def _install_handlers(app: FastAPI, service: Service) -> None:
    @app.middleware("http")
    async def measure(request: Request, call_next):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        response = await call_next(request)
        service.metrics.observe(request.url.path, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(LetheError)
    async def lethe_error(request: Request, exc: LetheError) -> JSONResponse:  # noqa: ARG001
        return JSONResponse({"detail": str(exc)}, status_code=422)


def _hits(reader: TenantReader, hits: list, k: int) -> list[dict[str, Any]]:
    """Hits whose documents are still in the store (the forget guarantee), with titles and snippets."""
    docs = {d.id: d for d in reader.ws.store.get_many([h.doc_id for h in hits])}
    out = []
    for h in hits:
        d = docs.get(h.doc_id)
        if d is not None:
            out.append({"doc_id": h.doc_id, "score": float(h.score), "title": d.title, "snippet": d.text[:240]})
    return out[:k]


def _routes_read(app: FastAPI, service: Service, role: Callable) -> None:
    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return service.metrics.render(service.jobs.counts())

    @app.post("/search")
    def search(body: SearchIn, who: Annotated[Principal, Depends(role("reader"))]) -> dict[str, Any]:
        reader = service.reader(who.tenant)
        with reader.lock:
            if not reader.ws.indexes() and not len(reader.ws.store):
                return {"retriever": body.retriever, "hits": []}  # a new tenant: nothing to search yet
            retriever = reader.retriever(body.retriever)
            depth = body.rerank.depth if body.rerank else body.k
            if body.rerank is not None:
                retriever = reader.reranker(body.rerank.model, body.rerank.mode).after(retriever, depth)
            hits = retriever.search([body.query], max(depth, body.k) + 10)[0]
            return {"retriever": body.retriever, "hits": _hits(reader, hits, body.k)}

    @app.get("/documents/{doc_id}")
    def document(doc_id: str, who: Annotated[Principal, Depends(role("reader"))]) -> dict[str, Any]:
        doc = service.read(who.tenant, lambda ws: ws.store.get(doc_id))
        if doc is None:
            raise HTTPException(404, f"no document {doc_id!r}")
        return {"id": doc.id, "title": doc.title, "text": doc.text, "owners": list(doc.owners)}

    @app.get("/jobs/{job_id}")
    def job(job_id: str, who: Annotated[Principal, Depends(role("reader"))]) -> dict[str, Any]:
        found = service.jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id!r}")
        if found.tenant != who.tenant:
            raise HTTPException(403, "this job belongs to another tenant; this key reaches only its own")
        return found.__dict__

    @app.get("/evaluation")
    def evaluation(who: Annotated[Principal, Depends(role("reader"))]) -> dict[str, Any]:
        if not service.jobs.points(who.tenant):
            reader = service.reader(who.tenant)
            with reader.lock:
                if not reader.ws.ledger.receipt_requests():  # nothing forgotten yet: this is "before"
                    service.record_figure(reader.ws, who.tenant, "before forgetting", first_only=True)
        points = service.jobs.points(who.tenant)
        return {"available": bool(points), "measure": MEASURE, "points": points}

    @app.get("/receipts")
    def receipts(who: Annotated[Principal, Depends(role("reader"))]) -> list[dict[str, Any]]:
        found = service.read(who.tenant, lambda ws: [ws.ledger.receipt(r) for r in ws.ledger.receipt_requests()])
        return [{"request_id": e.request_id, "level": e.payload.get("level"), "n_docs": e.payload.get("n_docs"),
                 "reason": e.payload.get("reason"), "finished_at": e.payload.get("finished_at")}
                for e in found if e is not None]

    @app.get("/receipts/{request_id}")
    def receipt(request_id: str, who: Annotated[Principal, Depends(role("reader"))]) -> dict[str, Any]:
        entry = service.read(who.tenant, lambda ws: ws.ledger.receipt(request_id))
        if entry is None:
            raise HTTPException(404, f"no receipt for request {request_id!r}")
        return {**entry.payload, "entry_hash": entry.entry_hash}


def _routes_write(app: FastAPI, service: Service, role: Callable) -> None:
    @app.post("/documents")
    def add_documents(body: DocumentsIn, who: Annotated[Principal, Depends(role("editor"))]) -> dict[str, Any]:
        ids = [d.id for d in body.documents]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "documents: an id is repeated within the batch")
        docs = [Doc(d.id, d.text, d.title, (d.owner,) if d.owner else ()) for d in body.documents]
        with Workspace(service.tenant_home(who.tenant), show_progress=False, create=False) as ws:
            try:
                replaced = ws.add_documents(docs)
            except LetheError as exc:
                raise HTTPException(409 if "tombstone" in str(exc) else 422, str(exc)) from exc
        return {"added": len(docs) - replaced, "replaced": replaced}

    @app.post("/forget", status_code=202)
    def forget(body: ForgetIn, who: Annotated[Principal, Depends(role("editor"))]) -> dict[str, Any]:
        from lethe.pipelines.forget import check_request

        if not body.doc_ids and not body.owners:
            raise HTTPException(422, "doc_ids, owners: name at least one document id or owner")
        request = ForgetRequest(tuple(body.doc_ids), tuple(body.owners), body.reason)
        checked = service.read(who.tenant, lambda ws: check_request(ws, request))
        unknown = [("doc_ids", checked.unknown_docs), ("owners", checked.unknown_owners)]
        for field_name, ids in unknown:
            if ids:
                raise HTTPException(422, f"{field_name}: {len(ids)} unknown id(s), e.g. {ids[:10]}; nothing was "
                                         "changed")
        job = service.jobs.submit(who.tenant, body.model_dump())
        service.worker.wake.set()
        return {"job_id": job.id, "state": job.state}


def _routes_admin(app: FastAPI, service: Service, role: Callable) -> None:
    @app.get("/verify")
    def verify(who: Annotated[Principal, Depends(role("admin"))]) -> dict[str, Any]:
        return service.verify(who.tenant)

    @app.get("/models")
    def models(who: Annotated[Principal, Depends(role("admin"))]) -> list[dict[str, Any]]:
        refs = service.read(who.tenant, lambda ws: ws.registry.list())
        return [{"name": r.name, "version": r.version, "kind": r.kind, "status": r.status,
                 "retired_by": (r.manifest.get("tombstone") or {}).get("retired_by")} for r in refs]
