"""Bulk index builds with Ray Data (``lethe index --ray``).

:class:`RayBulk` is a Ray session for one build: a local Ray started (and stopped) by lethe, or an existing
cluster given by address. It gives :meth:`Workspace.build_bm25` a tokeniser and :meth:`Workspace.build_dense`
a document encoder that fan the work out with ``map_batches``:

* BM25: batches of documents are tokenised by Ray tasks with the index's own :class:`Analyzer` (rebuilt from
  its config); the token lists come back in store order and are indexed by ``BM25Index.add_tokens``, the
  path ``BM25Index.add`` takes, so the index is the single-process one (same ids, same statistics).
* dense: an actor pool holds the encoder, rebuilt in each actor from the loaded model (shipped once through
  the object store, so a cluster needs no copy of the workspace's model files) with the same backend, prompts
  and version; each actor encodes batches of texts. Vectors come back by position, and the dense index's own
  cache lookup, cache writes and ``add_vectors`` run on the driver as in a single-process build; only the
  batching of the encoder differs (vectors equal within float tolerance).

Ray is imported only when a session starts; lethe itself never imports it. The actors and tasks import
lethe, so a cluster's nodes need it installed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lethe.embedding.encoders import Encoder, make_encoder
from lethe.errors import LetheError, MissingDependency
from lethe.retrieval.analysis import Analyzer
from lethe.types import Doc

#: Ray's default ports: the GCS of ``ray start --head`` and the Ray Client server (``ray://``)
GCS_PORT, CLIENT_PORT = 6379, 10001
#: seconds to wait for a TCP connection to a Ray address before calling it unreachable
CONNECT_TIMEOUT_S = 5.0


def _ray() -> Any:
    """The ``ray`` module (with Ray Data), or :class:`MissingDependency` with the install hint."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("--ray needs Ray Data: pip install 'lethe-ir[ray]' (ray[data]>=2.9)") from exc
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host[:port]`` or ``ray://host[:port]`` (default ports as Ray's)."""
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, ""
    if not host or (port and not port.isdigit()):
        raise LetheError(f"--ray-address {address!r} is not host:port or ray://host:port")
    return host.strip("[]"), int(port) if port else (CLIENT_PORT if client else GCS_PORT)


def check_ray_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`LetheError` naming ``address`` unless something accepts a TCP connection there.

    ``ray.init`` retries an unreachable address for minutes; this fails in ``timeout`` seconds instead.
    ``auto`` (the cluster this machine belongs to) is left to Ray.
    """
    if address == "auto":
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise LetheError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it (`ray start --head`) "
                         "or fix --ray-address (leave it out for a local Ray); nothing was written") from exc


@dataclass
class RayBulk:
    """A Ray session for bulk index builds; use it as a context manager around the builds.

    ``address``: an existing cluster (``host:port``, ``ray://host:port`` or ``auto``); None starts a local
    Ray with ``num_cpus`` CPUs (None: every core) that is shut down on exit. ``actors``: encoder actors
    (None: one per CPU of the cluster, at most one per batch); ``batch_size``: documents per batch.
    """

    address: str | None = None
    num_cpus: int | None = None
    actors: int | None = None
    batch_size: int = 256
    show_progress: bool = False
    _started: bool = field(default=False, init=False, repr=False)
    _log_level: int | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> RayBulk:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Connect to the cluster (or start a local Ray); an unreachable address is a :class:`LetheError`."""
        if self.batch_size < 1:
            raise LetheError(f"the Ray batch size must be at least 1, got {self.batch_size}")
        ray = _ray()
        if self.address is not None:
            check_ray_address(self.address)
        if not ray.is_initialized():  # else a session the caller started: use it, leave it running
            self._init(ray)
            self._started = True
        self._configure(ray)

    def _init(self, ray: Any) -> None:
        """``ray.init`` on the address (or a new local Ray); Ray's errors become a :class:`LetheError`."""
        try:
            if self.address is None:
                ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            else:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:  # Ray raises many types (ConnectionError, RuntimeError, ValueError, ...)
            what = f"connect to the Ray cluster at {self.address!r}" if self.address else "start a local Ray"
            hint = " (a cluster with token authentication needs its token, see Ray's token-auth docs)" \
                if self.address else ""
            raise LetheError(f"cannot {what}: {exc}{hint}; nothing was written") from exc

    def _configure(self, ray: Any) -> None:
        """Progress bars and Ray Data's INFO lines only with ``show_progress`` (restored by :meth:`stop`)."""
        ray.data.DataContext.get_current().enable_progress_bars = self.show_progress
        logger = logging.getLogger("ray.data")
        self._log_level = logger.level
        if not self.show_progress:
            logger.setLevel(logging.WARNING)

    def stop(self) -> None:
        """Shut Ray down if this session started it."""
        if self._log_level is not None:
            logging.getLogger("ray.data").setLevel(self._log_level)
            self._log_level = None
        if self._started:
            _ray().shutdown()
            self._started = False

    # -- work ----------------------------------------------------------------------------------
    def _dataset(self, texts: Sequence[str]) -> Any:
        """``(pos, text)`` rows (Ray splits them into blocks that ``map_batches`` bundles into batches)."""
        return _ray().data.from_items([{"pos": i, "text": t} for i, t in enumerate(texts)])

    def _pool_size(self, n_texts: int) -> int:
        if self.actors is not None:
            return max(1, self.actors)
        cpus = int(_ray().cluster_resources().get("CPU", 1)) or 1
        return max(1, min(cpus, math.ceil(n_texts / self.batch_size)))

    def tokenize(self, analyzer: Analyzer, docs: Sequence[Doc]) -> list[list[str]]:
        """The terms of each document's ``contents`` (as ``analyzer`` gives them), in input order."""
        if not docs:
            return []
        ds = self._dataset([d.contents for d in docs]).map_batches(
            _tokenize_batch, fn_kwargs={"config": analyzer.config()}, batch_size=self.batch_size,
            batch_format="pyarrow")
        out: list[list[str]] = [[] for _ in docs]
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for pos, tokens in zip(batch["pos"].to_pylist(), batch["tokens"].to_pylist()):
                out[pos] = tokens
        return out

    def encode(self, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
        """Document vectors of ``texts`` by an actor pool holding ``encoder``, one row per text, in order."""
        if not texts:
            return np.zeros((0, getattr(encoder, "dim", 0)), dtype=np.float32)
        ray = _ray()
        shipped = [ray.put(_recipe(encoder))]  # in a list: the actors fetch it themselves, once each
        ds = self._dataset(texts).map_batches(
            _EncodeActor, fn_constructor_args=(shipped,),
            compute=ray.data.ActorPoolStrategy(size=self._pool_size(len(texts))),
            batch_size=self.batch_size, batch_format="numpy", num_cpus=1)
        vecs: np.ndarray | None = None
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if vecs is None:
                vecs = np.zeros((len(texts), batch["vec"].shape[1]), dtype=np.float32)
            vecs[batch["pos"]] = batch["vec"]
        if vecs is None:
            raise LetheError(f"Ray returned no vectors for {len(texts)} documents")
        return vecs

    def document_encoder(self, encoder: Encoder) -> RayDocumentEncoder:
        """``encoder`` with its document side run on Ray (what ``Workspace.build_dense(doc_encoder=)`` takes)."""
        return RayDocumentEncoder(encoder, self)


@dataclass
class RayDocumentEncoder:
    """An :class:`~lethe.embedding.Encoder` whose documents are encoded on Ray; queries stay local."""

    local: Encoder
    bulk: RayBulk

    @property
    def version(self) -> str:
        """The wrapped encoder's version (the cache and the index are keyed by it)."""
        return self.local.version

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Document vectors, float32, computed by the actor pool."""
        return self.bulk.encode(self.local, texts)

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Query vectors, computed here."""
        return self.local.encode_queries(texts, show_progress)


def _recipe(encoder: Encoder) -> dict[str, Any]:
    """What an actor rebuilds ``encoder`` from: :func:`make_encoder`'s arguments for lethe's encoders (the
    model pickles; an ONNX Runtime session does not), else ``{"encoder": encoder}`` (pickled as it is)."""
    if not all(hasattr(encoder, a) for a in ("model", "batch_size", "normalize")):
        return {"encoder": encoder}
    return {"model": encoder.model, "version": encoder.version, "backend": getattr(encoder, "backend", "torch"),
            "threads": getattr(encoder, "threads", None), "batch_size": encoder.batch_size,
            "normalize": encoder.normalize, "query_prompt": getattr(encoder, "query_prompt", None),
            "document_prompt": getattr(encoder, "document_prompt", None)}


class _EncodeActor:
    """A Ray Data actor: rebuilds the encoder once from its recipe, then encodes ``text`` batches into ``vec``."""

    def __init__(self, shipped: list[Any]) -> None:
        import ray

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        recipe = ray.get(shipped[0])
        self.encoder: Encoder = recipe["encoder"] if "encoder" in recipe else make_encoder(**recipe)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"pos": batch["pos"], "vec": self.encoder.encode_documents([str(t) for t in batch["text"]])}


def _tokenize_batch(batch: Any, config: dict[str, Any]) -> Any:
    """A Ray Data task: ``(pos, text)`` -> ``(pos, tokens)`` with an :class:`Analyzer` built from ``config``."""
    import pyarrow as pa

    analyzer = Analyzer(**config)
    tokens = [analyzer(t) for t in batch["text"].to_pylist()]
    return pa.table({"pos": batch["pos"], "tokens": pa.array(tokens, type=pa.list_(pa.string()))})
