"""Dense retrieval with FAISS, string doc ids, and honest deletion.

* ``flat`` (default): ``IndexIDMap2(IndexFlatIP)``; ``remove_ids`` is exact.
* ``ivf``: ``IndexIVFFlat``; ``remove_ids`` removes the vectors, but the coarse centroids were
  trained with them: the index reports it (``exactness()``) and :meth:`DenseIndex.retrain`
  re-trains the centroids on the remaining vectors, which makes it equal to a rebuild.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``; HNSW cannot remove, so deletion rebuilds the graph from
  the stored vectors minus the deleted ones.

Doc ids map to int64 by a hash (the same id always gets the same int, so a rebuild has the same
ids); a collision is detected and refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lethe.embedding.cache import EmbeddingCache
from lethe.embedding.encoders import Encoder
from lethe.errors import IndexError_
from lethe.retrieval.base import INDEX_READ_ERRORS, atomic_write_bytes, check_index_file, corrupt_index
from lethe.store.docstore import content_hash
from lethe.types import Doc, Hit

KINDS = ("flat", "ivf", "hnsw")
FORMAT_VERSION = 1


def int_id(doc_id: str) -> int:
    """A stable non-negative int64 for a string id."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little") & (2**63 - 1)


def _faiss():  # noqa: ANN202
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        from lethe.errors import MissingDependency

        raise MissingDependency("dense retrieval needs FAISS: pip install faiss-cpu") from exc
    return faiss


class DenseIndex:
    """A FAISS inner-product index over encoder vectors, with exact (or rebuilt) deletion."""

    def __init__(self, dim: int, kind: str = "flat", encoder_version: str = "", nlist: int | None = None,
                 hnsw_m: int = 32, nprobe: int = 16) -> None:
        if kind not in KINDS:
            raise IndexError_(f"unknown dense index kind {kind!r}; choose from {list(KINDS)}")
        self.dim, self.kind, self.encoder_version = int(dim), kind, encoder_version
        self.nlist, self.hnsw_m, self.nprobe = nlist, hnsw_m, nprobe
        self.order: list[str] = []  # doc ids in insertion order
        self.ids: dict[str, int] = {}
        self.rev: dict[int, str] = {}
        self.trained_with: set[str] = set()  # ivf: docs whose vectors trained the centroids
        self.deleted_since_training = 0
        self.index = self._new_index()
        self.encoder: Encoder | None = None
        self.cache: EmbeddingCache | None = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Sequence[Doc], encoder: Encoder, kind: str = "flat",
              cache: EmbeddingCache | None = None, show_progress: bool = True, **kw: Any) -> DenseIndex:
        """Encode ``docs`` (through the cache) and index them."""
        probe = encoder.encode_queries(["dimension probe"])
        index = cls(probe.shape[1], kind=kind, encoder_version=encoder.version, **kw)
        index.attach(encoder, cache)
        index.add(docs, show_progress=show_progress)
        return index

    def attach(self, encoder: Encoder, cache: EmbeddingCache | None = None) -> None:
        """Attach the encoder (must be the version that built the index) and an optional cache."""
        if self.encoder_version and encoder.version != self.encoder_version:
            raise IndexError_(
                f"this index was built with encoder {self.encoder_version}, not {encoder.version}; "
                "rebuild it with the new encoder"
            )
        self.encoder, self.cache = encoder, cache

    def _new_index(self):  # noqa: ANN202
        faiss = _faiss()
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if self.kind == "hnsw":
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT))
        return None  # ivf: created at training time, when nlist is known

    def _new_ivf(self, n: int):  # noqa: ANN202
        faiss = _faiss()
        nlist = self.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = 1234
        ivf.nprobe = min(self.nprobe, nlist)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return ivf

    def embed(self, docs: Sequence[Doc], show_progress: bool = False) -> np.ndarray:
        """Vectors of ``docs``: cached ones reused, the rest encoded (batched) and cached."""
        if self.encoder is None:
            raise IndexError_("no encoder attached: call attach(encoder) before adding documents")
        hashes = [content_hash(d) for d in docs]
        cached = self.cache.get_many(self.encoder_version, hashes) if self.cache else {}
        todo = [i for i, h in enumerate(hashes) if h not in cached]
        vecs = np.zeros((len(docs), self.dim), dtype=np.float32)
        if todo:
            new = self.encoder.encode_documents([docs[i].contents for i in todo], show_progress)
            vecs[todo] = new
            if self.cache is not None:
                self.cache.put_many(self.encoder_version, [hashes[i] for i in todo], new)
        for i, h in enumerate(hashes):
            if h in cached:
                vecs[i] = cached[h]
        return vecs

    def add(self, docs: Sequence[Doc], show_progress: bool = False) -> None:
        """Encode and add documents; an id already present is an error."""
        self.add_vectors([d.id for d in docs], self.embed(docs, show_progress))

    def add_vectors(self, doc_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add precomputed vectors (shape ``(n, dim)``)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(doc_ids):
            raise IndexError_(f"expected {len(doc_ids)} vectors of dim {self.dim}, got {vectors.shape}")
        ints = self._assign_ids(doc_ids)
        if self.kind == "ivf" and self.index is None:
            self.index = self._new_ivf(len(vectors))
            self._train(vectors, doc_ids)
        self.index.add_with_ids(vectors, ints)
        self.order.extend(doc_ids)

    def _assign_ids(self, doc_ids: Sequence[str]) -> np.ndarray:
        ints = []
        for d in doc_ids:
            if d in self.ids:
                raise IndexError_(f"document {d!r} is already in the dense index")
            i = int_id(d)
            if i in self.rev:
                raise IndexError_(f"int64 id collision between {d!r} and {self.rev[i]!r}")
            ints.append(i)
        for d, i in zip(doc_ids, ints):
            self.ids[d], self.rev[i] = i, d
        return np.asarray(ints, dtype=np.int64)

    def _train(self, vectors: np.ndarray, doc_ids: Sequence[str]) -> None:
        if len(vectors) < self.index.nlist:
            raise IndexError_(
                f"IVF with {self.index.nlist} lists needs at least that many vectors to train, got "
                f"{len(vectors)}; use kind='flat' or a smaller nlist"
            )
        self.index.train(vectors)
        self.trained_with = set(doc_ids)
        self.deleted_since_training = 0

    # -- deletion ------------------------------------------------------------------------------
    def delete(self, doc_ids: Collection[str]) -> int:
        """Remove documents; returns how many were present (see ``exactness()`` for IVF)."""
        present = [d for d in dict.fromkeys(doc_ids) if d in self.ids]
        if not present:
            return 0
        if self.kind == "hnsw":
            self._rebuild_without(set(present))
        else:
            ints = np.asarray([self.ids[d] for d in present], dtype=np.int64)
            removed = self.index.remove_ids(ints)
            if removed != len(present):
                raise IndexError_(f"FAISS removed {removed} of {len(present)} vectors")
        for d in present:
            self.rev.pop(self.ids.pop(d))
        gone = set(present)
        self.order = [d for d in self.order if d not in gone]
        if self.kind == "ivf":
            self.deleted_since_training += len(gone & self.trained_with)
            self.trained_with -= gone
        return len(present)

    def vectors(self, doc_ids: Sequence[str] | None = None) -> np.ndarray:
        """Stored vectors of ``doc_ids`` (all, in insertion order, by default)."""
        ids = self.order if doc_ids is None else list(doc_ids)
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.kind == "ivf":
            return np.stack([self.index.reconstruct(self.ids[d]) for d in ids])
        return np.stack([self.index.reconstruct(self.ids[d]) for d in ids]).astype(np.float32)

    def _rebuild_without(self, gone: set[str]) -> None:
        keep = [d for d in self.order if d not in gone]
        vecs = self.vectors(keep)
        self.index = self._new_index()
        if keep:
            self.index.add_with_ids(vecs, np.asarray([self.ids[d] for d in keep], dtype=np.int64))

    def exactness(self) -> dict[str, Any]:
        """Whether the index equals a rebuild without the deleted documents, and why not."""
        if self.kind == "ivf" and self.deleted_since_training:
            return {"exact": False, "reason": (
                f"IVF centroids were trained with {self.deleted_since_training} deleted vector(s); "
                "call retrain() to re-train them on the remaining vectors")}
        return {"exact": True, "reason": ""}

    def retrain(self) -> None:
        """IVF: re-train the centroids on the remaining vectors and re-add them (= a rebuild)."""
        if self.kind != "ivf":
            return
        keep = list(self.order)
        vecs = self.vectors(keep)
        self.index = self._new_ivf(len(keep))
        self._train(vecs, keep)
        self.index.add_with_ids(vecs, np.asarray([self.ids[d] for d in keep], dtype=np.int64))

    # -- search --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.ids

    def search(self, queries: Sequence[str], k: int = 10, show_progress: bool = False) -> list[list[Hit]]:
        """Encode queries and return the top-k hits of each."""
        if self.encoder is None:
            raise IndexError_("no encoder attached: call attach(encoder) before searching")
        return self.search_vectors(self.encoder.encode_queries(list(queries), show_progress), k)

    def search_vectors(self, qvecs: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k hits for query vectors."""
        if not len(self.order):
            return [[] for _ in range(len(qvecs))]
        scores, ints = self.index.search(np.ascontiguousarray(qvecs, dtype=np.float32), min(k, len(self)))
        rev = self.rev
        return [[Hit(rev[i], float(s)) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores.tolist(), ints.tolist())]

    # -- identity and persistence --------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Configuration (kind, dim, encoder version, IVF/HNSW parameters)."""
        return {"kind": self.kind, "dim": self.dim, "encoder_version": self.encoder_version,
                "nlist": self.nlist, "hnsw_m": self.hnsw_m, "nprobe": self.nprobe}

    def fingerprint(self) -> str:
        """sha256 over the params and every (doc id, vector) pair sorted by id."""
        h = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode())
        ids = sorted(self.order)
        h.update("\n".join(ids).encode())
        h.update(np.round(self.vectors(ids), 5).astype("<f4").tobytes())
        if self.kind == "ivf" and self.index is not None:  # the centroids are part of the state
            centroids = self.index.quantizer.reconstruct_n(0, self.index.nlist)
            h.update(np.round(centroids, 4).astype("<f4").tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write index + metadata to one ``.npz`` file atomically."""
        faiss = _faiss()
        meta = {"format": FORMAT_VERSION, "params": self.params(), "order": self.order,
                "trained_with": sorted(self.trained_with),
                "deleted_since_training": self.deleted_since_training}
        blob = faiss.serialize_index(self.index) if self.index is not None else np.zeros(0, np.uint8)
        arrays = {"faiss": blob, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | None = None,
             cache: EmbeddingCache | None = None) -> DenseIndex:
        """Load an index written by :meth:`save` (attach the encoder to search by text).

        A missing, truncated or corrupt file raises :class:`IndexError_` naming it and saying how to rebuild it.
        """
        path = Path(path)
        check_index_file(path)
        try:
            index = cls._from_npz(path)
        except INDEX_READ_ERRORS as exc:
            raise corrupt_index(path, "dense", exc) from exc
        if encoder is not None:
            index.attach(encoder, cache)
        return index

    @classmethod
    def _from_npz(cls, path: Path) -> DenseIndex:
        """Read the FAISS blob and metadata (any damage raises one of ``INDEX_READ_ERRORS``)."""
        faiss = _faiss()
        with np.load(path, allow_pickle=False) as z:
            meta, blob = json.loads(bytes(z["meta"]).decode()), z["faiss"]
        p = meta["params"]
        index = cls(p["dim"], p["kind"], p["encoder_version"], p["nlist"], p["hnsw_m"], p["nprobe"])
        index.index = faiss.deserialize_index(blob) if len(blob) else None
        if index.kind == "ivf" and index.index is not None:
            index.index.nprobe = min(index.nprobe, index.index.nlist)
        index.order = list(meta["order"])
        index.ids = {d: int_id(d) for d in index.order}
        index.rev = {i: d for d, i in index.ids.items()}
        index.trained_with = set(meta["trained_with"])
        index.deleted_since_training = int(meta["deleted_since_training"])
        stored = index.index.ntotal if index.index is not None else 0
        if stored != len(index.order):
            raise ValueError(f"FAISS holds {stored} vectors but the metadata lists {len(index.order)} ids")
        return index
