"""Dense retrieval in Milvus (``pymilvus``): embedded Milvus Lite by default, a Milvus server by URI.

:class:`MilvusIndex` keeps the contract of :class:`~lethe.retrieval.dense.DenseIndex` (same methods,
same semantics), so the forget flow and its verification treat both alike. It is always exact: a
``FLAT`` index with the inner-product metric, whose results equal a FAISS flat index over the same
vectors. Vectors come from the same encoder and embedding-cache path ``DenseIndex`` uses.

Storage: one collection per index (``lethe_<name>_<build token>_g<generation>``), a ``VARCHAR``
primary key (the doc id) and a ``FLOAT_VECTOR`` field. The lethe metadata file written by
:meth:`MilvusIndex.save` (an ``.npz`` like the FAISS index's) holds the URI, the collection and the
doc ids in insertion order; the vectors live in Milvus. Install with ``pip install lethe-ir[milvus]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lethe.embedding.cache import EmbeddingCache
from lethe.embedding.encoders import Encoder
from lethe.errors import IndexError_, MissingDependency
from lethe.retrieval.base import (
    INDEX_READ_ERRORS,
    atomic_write_bytes,
    check_index_file,
    corrupt_index,
    rebuild_hint,
)
from lethe.retrieval.dense import DenseIndex
from lethe.types import Doc, Hit

BACKEND = "milvus"
FORMAT_VERSION = 1
#: Milvus Lite data directories end with this (pymilvus treats a URI ending in ``.db`` as Milvus Lite)
LITE_SUFFIX = ".milvus.db"
PK, VECTOR = "id", "vector"
#: the longest doc id (bytes of UTF-8) a VARCHAR primary key holds
MAX_ID_BYTES = 65_535
#: Milvus answers at most this many hits per query
MAX_TOPK = 16_384
#: rows per insert / ids per query or delete expression / queries per search call
BATCH, ID_BATCH, QUERY_BATCH = 1_000, 500, 64
CONNECT_TIMEOUT_S = 10.0
COMPACTION_TIMEOUT_S = 600.0
#: a server token is read from this variable at connect time (never written to a lethe file)
TOKEN_ENV = "LETHE_MILVUS_TOKEN"
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")


# -- connecting ----------------------------------------------------------------------------------

def _pymilvus():  # noqa: ANN202
    try:
        import pymilvus
    except ImportError as exc:
        raise MissingDependency("the Milvus backend needs pymilvus and Milvus Lite: "
                                "pip install 'lethe-ir[milvus]'  (pymilvus, milvus-lite)") from exc
    return pymilvus


def check_installed() -> None:
    """Raise :class:`MissingDependency` with the install hint when pymilvus is not installed."""
    _pymilvus()


def is_lite(uri: str) -> bool:
    """True for a Milvus Lite path (a local ``.db`` directory), False for a server URI."""
    return not uri.startswith(_SERVER_SCHEMES)


def normalise_uri(uri: str) -> str:
    """A server URI as given; a Milvus Lite path made absolute (it must end with ``.db``)."""
    if not is_lite(uri):
        return uri
    if not uri.endswith(".db"):
        raise IndexError_(f"Milvus Lite path {uri!r} must end with .db (or give a server URI like http://host:19530)")
    return str(Path(uri).expanduser().resolve())


def connect(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A ``MilvusClient`` for ``uri`` (Milvus Lite starts in-process); :class:`IndexError_` naming the URI if
    it cannot connect."""
    pymilvus = _pymilvus()
    uri = normalise_uri(uri)
    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    token = os.environ.get(TOKEN_ENV, "")
    try:
        return pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout)
    except pymilvus.MilvusException as exc:
        hint = (" (Milvus Lite opens a data directory in one process only: is another lethe process using it?)"
                if is_lite(uri) else " (is the Milvus server running and reachable?)")
        raise IndexError_(f"cannot connect to Milvus at {uri}: {exc.message}{hint}") from exc


def check_uri(uri: str) -> None:
    """Fail early (before anything is written) when ``uri`` is unusable: pymilvus missing, a server that
    does not answer, or a Lite path not ending in ``.db``. A Lite path is not opened."""
    _pymilvus()
    if is_lite(normalise_uri(uri)):
        return
    connect(uri).close()


def collection_name(name: str) -> str:
    """A fresh collection base name for index ``name``: ``lethe_<name>_<build token>`` (letters, digits, _)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)[:48]
    return f"lethe_{safe}_{secrets.token_hex(4)}"


def lite_path_for(index_file: str | Path) -> Path:
    """Where the Milvus Lite directory of an index file lives: beside it, ``<name>.milvus.db``."""
    path = Path(index_file)
    return path.with_name(path.stem + LITE_SUFFIX)


def _quote(value: str) -> str:
    """A string literal for a Milvus filter expression."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def _in_expr(ids: Sequence[str]) -> str:
    return f"{PK} in [{', '.join(_quote(d) for d in ids)}]"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- the index ------------------------------------------------------------------------------------

class MilvusIndex:
    """A Milvus collection of encoder vectors with exact search and exact deletion.

    Same contract as :class:`~lethe.retrieval.dense.DenseIndex` with ``kind="flat"``: ``build``,
    ``attach``, ``embed``, ``add``, ``add_vectors``, ``delete``, ``vectors``, ``exactness``, ``search``,
    ``search_vectors``, ``params``, ``fingerprint``, ``save``, ``load``. ``fingerprint`` covers the
    content (ids, vectors) and the search it equals (a FAISS flat index), not where it is stored, so it
    equals the fingerprint of a ``DenseIndex`` rebuilt over the same documents.

    Deletion: in Milvus a delete is a tombstone until compaction. :meth:`delete` deletes by primary key,
    ``flush``-es, calls ``compact`` and waits for it, then checks that a query by id no longer returns
    the ids; from then on they are absent by id and from search. On a Milvus server, compaction rewrites
    the segments without the deleted rows; the old segment files in its object storage are removed by the
    server's garbage collector later, outside lethe's view. Milvus Lite (3.x) does not compact on demand
    (its ``compact`` is a no-op; it merges files on its own schedule), so its files keep the deleted row and
    a tombstone naming its id: :meth:`save` then rewrites the live rows into the next generation of the
    collection and drops the old one, which removes its files. After ``save``, the Lite directory holds
    no byte of a deleted document.

    Milvus Lite runs in the process and locks its directory: one process at a time uses a Lite index
    (use a Milvus server for a service and command-line writers at once).
    """

    kind = "flat"

    def __init__(self, dim: int, encoder_version: str = "", uri: str = "lethe" + LITE_SUFFIX,
                 collection: str | None = None) -> None:
        self._twin = DenseIndex(dim, "flat", encoder_version)  # the configuration this index equals
        self.dim, self.encoder_version = self._twin.dim, encoder_version
        self.nlist, self.hnsw_m, self.nprobe = self._twin.nlist, self._twin.hnsw_m, self._twin.nprobe
        self.uri = normalise_uri(uri)
        self.base = collection or collection_name("dense")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", self.base):
            raise IndexError_(f"Milvus collection name {self.base!r} must be letters, digits and _ "
                              "(not starting with a digit)")
        self.generation = 1
        self.order: list[str] = []  # doc ids in insertion order
        self._held: set[str] = set()
        #: rows deleted since the last rewrite may still be in Milvus Lite's files (save rewrites them)
        self.tombstones = False
        self._client: Any = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, docs: Sequence[Doc], encoder: Encoder, uri: str = "lethe" + LITE_SUFFIX,
              collection: str | None = None, cache: EmbeddingCache | None = None,
              show_progress: bool = True) -> MilvusIndex:
        """Encode ``docs`` (through the cache) and index them in a new collection at ``uri``."""
        probe = encoder.encode_queries(["dimension probe"])
        index = cls(probe.shape[1], encoder_version=encoder.version, uri=uri, collection=collection)
        index.attach(encoder, cache)
        index.add(docs, show_progress=show_progress)
        return index

    @property
    def collection(self) -> str:
        """The collection holding the vectors now (``<base>_g<generation>``)."""
        return f"{self.base}_g{self.generation}"

    @property
    def lite(self) -> bool:
        """True when the vectors live in Milvus Lite (a local directory)."""
        return is_lite(self.uri)

    @property
    def encoder(self) -> Encoder | None:
        return self._twin.encoder

    @property
    def cache(self) -> EmbeddingCache | None:
        return self._twin.cache

    def attach(self, encoder: Encoder, cache: EmbeddingCache | None = None) -> None:
        """Attach the encoder (must be the version that built the index) and an optional cache."""
        self._twin.attach(encoder, cache)

    def embed(self, docs: Sequence[Doc], show_progress: bool = False) -> np.ndarray:
        """Vectors of ``docs``: cached ones reused, the rest encoded (batched) and cached."""
        return self._twin.embed(docs, show_progress)

    def client(self) -> Any:
        """The ``MilvusClient`` of this index (connected on first use)."""
        if self._client is None:
            self._client = connect(self.uri)
        return self._client

    def close(self) -> None:
        """Close the client (a Milvus Lite server stays up for other indexes of the process until exit)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; a Milvus error becomes :class:`IndexError_` naming the URI and collection."""
        pymilvus = _pymilvus()
        try:
            return fn(*args, **kwargs)
        except pymilvus.MilvusException as exc:
            raise IndexError_(f"Milvus {what} failed at {self.uri} (collection {self.collection}): "
                              f"{exc.message}") from exc

    def _create(self, name: str) -> None:
        """Create collection ``name``: VARCHAR primary key, FLOAT_VECTOR with a FLAT inner-product index."""
        from pymilvus import DataType

        client = self.client()
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(PK, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name=VECTOR, index_type="FLAT", metric_type="IP")
        self._call("create_collection", client.create_collection, name, schema=schema, consistency_level="Strong")
        # an empty collection's index is ready at once: no wait (Milvus Lite cannot serve pymilvus' wait)
        self._call("create_index", client.create_index, name, index_params, sync=False)
        self._call("load_collection", client.load_collection, name)

    def _ensure_collection(self) -> None:
        if not self._call("has_collection", self.client().has_collection, self.collection):
            self._create(self.collection)

    # -- adding --------------------------------------------------------------------------------
    def add(self, docs: Sequence[Doc], show_progress: bool = False) -> None:
        """Encode and add documents; an id already present is an error."""
        self.add_vectors([d.id for d in docs], self.embed(docs, show_progress))

    def add_vectors(self, doc_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add precomputed vectors (shape ``(n, dim)``), then flush."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(doc_ids):
            raise IndexError_(f"expected {len(doc_ids)} vectors of dim {self.dim}, got {vectors.shape}")
        self._check_new(doc_ids)
        if not len(doc_ids):
            return
        self._ensure_collection()
        self._insert(self.collection, list(doc_ids), vectors)
        self.order.extend(doc_ids)
        self._held.update(doc_ids)

    def _check_new(self, doc_ids: Sequence[str]) -> None:
        seen: set[str] = set()
        for d in doc_ids:
            if d in self._held or d in seen:
                raise IndexError_(f"document {d!r} is already in the dense index")
            if not isinstance(d, str) or len(d.encode("utf-8")) > MAX_ID_BYTES:
                raise IndexError_(f"document id {str(d)[:80]!r} is not a string of at most {MAX_ID_BYTES} bytes")
            seen.add(d)

    def _insert(self, name: str, doc_ids: list[str], vectors: np.ndarray) -> None:
        client = self.client()
        for start in range(0, len(doc_ids), BATCH):
            rows = [{PK: d, VECTOR: v} for d, v in zip(doc_ids[start:start + BATCH],
                                                        vectors[start:start + BATCH].tolist())]
            self._call("insert", client.insert, name, rows)
        self._call("flush", client.flush, name)

    # -- deletion ------------------------------------------------------------------------------
    def delete(self, doc_ids: Collection[str]) -> int:
        """Delete documents by id (tombstone, flush, compact and wait; see the class docstring); returns how
        many were present. Raises :class:`IndexError_` if Milvus still returns one by id afterwards."""
        present = [d for d in dict.fromkeys(doc_ids) if d in self._held]
        if not present:
            return 0
        client = self.client()
        for batch in _chunks(present, ID_BATCH):
            self._call("delete", client.delete, self.collection, filter=_in_expr(batch))
        self._call("flush", client.flush, self.collection)
        self._compact()
        left = self._present(present)
        if left:
            raise IndexError_(f"Milvus at {self.uri} still returns {len(left)} deleted id(s) by id query "
                              f"(collection {self.collection}), e.g. {sorted(left)[:5]}")
        gone = set(present)
        self.order = [d for d in self.order if d not in gone]
        self._held -= gone
        self.tombstones = True
        return len(present)

    def _compact(self) -> None:
        """Run a compaction of the collection and wait until Milvus reports it completed."""
        client = self.client()
        job = self._call("compact", client.compact, self.collection)
        deadline = time.monotonic() + COMPACTION_TIMEOUT_S
        while not str(self._call("get_compaction_state", client.get_compaction_state, job)).lower().endswith(
                "completed"):
            if time.monotonic() > deadline:
                raise IndexError_(f"Milvus compaction of {self.collection} at {self.uri} did not complete within "
                                  f"{COMPACTION_TIMEOUT_S:.0f} s (job {job})")
            time.sleep(0.2)

    def _present(self, doc_ids: Sequence[str]) -> set[str]:
        """The ids among ``doc_ids`` that a query by id returns (Strong consistency)."""
        client, found = self.client(), set()
        for batch in _chunks(list(doc_ids), ID_BATCH):
            rows = self._call("query", client.query, self.collection, filter=_in_expr(batch),
                              output_fields=[PK], consistency_level="Strong")
            found.update(r[PK] for r in rows)
        return found

    # -- reading -------------------------------------------------------------------------------
    def vectors(self, doc_ids: Sequence[str] | None = None) -> np.ndarray:
        """Stored vectors of ``doc_ids`` (all, in insertion order, by default), read back from Milvus."""
        return self._vectors_from(self.collection, self.order if doc_ids is None else list(doc_ids))

    def _vectors_from(self, name: str, ids: list[str]) -> np.ndarray:
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        client, got = self.client(), {}
        for batch in _chunks(ids, ID_BATCH):
            rows = self._call("query", client.query, name, filter=_in_expr(batch),
                              output_fields=[PK, VECTOR], consistency_level="Strong")
            got.update((r[PK], r[VECTOR]) for r in rows)
        missing = [d for d in ids if d not in got]
        if missing:
            raise IndexError_(f"{len(missing)} id(s) are not in Milvus collection {name} at {self.uri}, "
                              f"e.g. {missing[:5]}")
        return np.asarray([got[d] for d in ids], dtype=np.float32)

    def exactness(self) -> dict[str, Any]:
        """Always exact: FLAT search over exactly the live vectors equals a rebuild without the deleted ones."""
        return {"exact": True, "reason": ""}

    # -- search --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, doc_id: object) -> bool:
        """Asks Milvus (a query by id), not only the metadata."""
        if not isinstance(doc_id, str):
            return False
        if not self._call("has_collection", self.client().has_collection, self.collection):
            return False
        return bool(self._present([doc_id]))

    def search(self, queries: Sequence[str], k: int = 10, show_progress: bool = False) -> list[list[Hit]]:
        """Encode queries and return the top-k hits of each."""
        if self.encoder is None:
            raise IndexError_("no encoder attached: call attach(encoder) before searching")
        return self.search_vectors(self.encoder.encode_queries(list(queries), show_progress), k)

    def search_vectors(self, qvecs: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-k hits for query vectors (inner product, exact)."""
        qvecs = np.ascontiguousarray(qvecs, dtype=np.float32)
        if not len(self.order):
            return [[] for _ in range(len(qvecs))]
        limit, client, out = min(k, len(self.order), MAX_TOPK), self.client(), []
        for start in range(0, len(qvecs), QUERY_BATCH):
            res = self._call("search", client.search, self.collection, data=qvecs[start:start + QUERY_BATCH].tolist(),
                             limit=limit, anns_field=VECTOR, search_params={"metric_type": "IP", "params": {}},
                             output_fields=[PK], consistency_level="Strong")
            out += [[Hit(h[PK] if PK in h else h["entity"][PK], float(h["distance"])) for h in row] for row in res]
        return out

    # -- identity and persistence --------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The FAISS flat parameters it equals, plus ``backend``, ``uri`` and the collection base name."""
        return {**self._twin.params(), "backend": BACKEND, "uri": self.uri, "collection": self.base}

    def fingerprint(self) -> str:
        """sha256 over the equivalent flat params and every (doc id, vector) pair sorted by id (the recipe of
        ``DenseIndex.fingerprint``: a rebuild as a FAISS flat index has the same fingerprint)."""
        h = hashlib.sha256(json.dumps(self._twin.params(), sort_keys=True).encode())
        ids = sorted(self.order)
        h.update("\n".join(ids).encode())
        h.update(np.round(self.vectors(ids), 5).astype("<f4").tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write the lethe metadata file (URI, collection, ids) atomically. On Milvus Lite, rows deleted since
        the last save are first purged by rewriting the collection; older generations are dropped after the
        file is written, and so is a collection this file named before (an index it replaces)."""
        path = Path(path)
        if self.tombstones and self.lite:
            self._rewrite()
        previous = _previous_meta(path)
        stored_uri = self.uri
        if self.lite and Path(self.uri).parent == path.parent.resolve():
            stored_uri = Path(self.uri).name  # beside the file: the workspace can move
        meta = {"format": FORMAT_VERSION, "backend": BACKEND, "params": self._twin.params(),
                "milvus": {"uri": stored_uri, "base": self.base, "generation": self.generation},
                "order": self.order}
        blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        atomic_write_bytes(path, lambda fh: np.savez(fh, meta=blob))
        self._drop_other_generations()
        if previous is not None:
            self._release_previous(previous, path)

    def _rewrite(self) -> None:
        """Copy the live rows into the next generation of the collection (no tombstone, no deleted row)."""
        old = self.collection
        self.generation += 1
        client = self.client()
        if self._call("has_collection", client.has_collection, self.collection):
            self._call("drop_collection", client.drop_collection, self.collection)  # left by a crash
        self._create(self.collection)
        for batch in _chunks(self.order, BATCH):
            ids = list(batch)
            self._insert(self.collection, ids, self._vectors_from(old, ids))
        if not self.order:
            self._call("flush", client.flush, self.collection)
        self.tombstones = False

    def drop(self) -> None:
        """Delete this index from Milvus: every generation of its collection; a Milvus Lite directory left
        with no collection is removed too. The metadata file is the caller's to delete or overwrite."""
        client = self.client()
        pattern = re.compile(re.escape(self.base) + r"_g\d+")
        for name in self._call("list_collections", client.list_collections):
            if pattern.fullmatch(name):
                self._call("drop_collection", client.drop_collection, name)
        if self.lite and not self._call("list_collections", client.list_collections):
            self.close()
            remove_lite_dir(self.uri)
        self.order, self._held, self.tombstones = [], set(), False

    def _drop_other_generations(self) -> None:
        client = self.client()
        pattern = re.compile(re.escape(self.base) + r"_g\d+")
        for name in self._call("list_collections", client.list_collections):
            if pattern.fullmatch(name) and name != self.collection:
                self._call("drop_collection", client.drop_collection, name)

    def _release_previous(self, previous: dict[str, Any], path: Path) -> None:
        """Drop what the metadata file described before this save, when it was another index."""
        old = previous["milvus"]
        old_uri = str((path.parent / old["uri"]).resolve()) if is_lite(old["uri"]) else old["uri"]
        if old["base"] == self.base and old_uri == self.uri:
            return
        try:
            if old_uri == self.uri:
                client = self.client()
                pattern = re.compile(re.escape(old["base"]) + r"_g\d+")
                for name in client.list_collections():
                    if pattern.fullmatch(name):
                        client.drop_collection(name)
            elif is_lite(old_uri) and Path(old_uri).parent == path.parent.resolve():
                remove_lite_dir(old_uri)  # a Lite directory beside the file belongs to the file
        except (OSError, IndexError_, _pymilvus().MilvusException) as exc:
            warnings.warn(f"could not drop the Milvus index {path} replaced ({old['base']} at {old_uri}): {exc}",
                          stacklevel=2)

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | None = None,
             cache: EmbeddingCache | None = None) -> MilvusIndex:
        """Open an index written by :meth:`save` (attach the encoder to search by text).

        A missing or corrupt metadata file, a missing collection or a row count that does not match raises
        :class:`IndexError_` naming the file and saying how to rebuild it. Fewer rows than ids (a delete whose
        save did not happen: a crash between the two) is taken as the deletion it was.
        """
        path = Path(path)
        check_index_file(path)
        try:
            meta = _read_meta(path)
            p, m = meta["params"], meta["milvus"]
            uri = str(path.parent / m["uri"]) if is_lite(m["uri"]) else m["uri"]
            index = cls(int(p["dim"]), p["encoder_version"], uri=uri, collection=m["base"])
            index.generation = int(m["generation"])
            index.order = [str(d) for d in meta["order"]]
        except INDEX_READ_ERRORS as exc:
            raise corrupt_index(path, "Milvus dense", exc) from exc
        index._held = set(index.order)
        index._open(path)
        if encoder is not None:
            index.attach(encoder, cache)
        return index

    def _open(self, path: Path) -> None:
        """Check the collection against the metadata; load it for search."""
        client = self.client()
        if not self._call("has_collection", client.has_collection, self.collection):
            if self.order:
                raise IndexError_(f"{path}: Milvus collection {self.collection} is missing at {self.uri}; "
                                  f"{rebuild_hint(path)}")
            return
        self._call("load_collection", client.load_collection, self.collection)
        rows = self._call("query", client.query, self.collection, filter="", output_fields=["count(*)"],
                          consistency_level="Strong")
        count = int(rows[0]["count(*)"])
        if count == len(self.order):
            return
        present = self._present(self.order) if count < len(self.order) else set()
        if count > len(self.order) or len(present) != count:
            raise IndexError_(f"{path}: Milvus collection {self.collection} at {self.uri} holds {count} rows but "
                              f"the metadata lists {len(self.order)} ids; {rebuild_hint(path)}")
        self.order = [d for d in self.order if d in present]
        self._held = set(self.order)
        self.tombstones = True


def _read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a Milvus index file (raises one of ``INDEX_READ_ERRORS`` if it is not one)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
    if meta.get("backend") != BACKEND:
        raise ValueError(f"not a Milvus index metadata file (backend {meta.get('backend')!r})")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unknown Milvus index format {meta.get('format')!r}")
    return meta


def _previous_meta(path: Path) -> dict[str, Any] | None:
    """The Milvus metadata at ``path`` before a save (None: no file, or not a Milvus index)."""
    if not path.is_file():
        return None
    try:
        return _read_meta(path)
    except INDEX_READ_ERRORS:
        return None


def remove_lite_dir(uri: str) -> None:
    """Stop the in-process Milvus Lite server of ``uri`` and delete its directory."""
    from milvus_lite import server_manager_instance

    server_manager_instance.release_server(uri)
    shutil.rmtree(uri, ignore_errors=False)

