"""Encoders: turn documents and queries into vectors for the dense index.

An encoder wraps a sentence-transformers model loaded through the registry and carries the
``version`` string (``name@vN``) that keys the embedding cache and the dense index lineage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Encoder(Protocol):
    """What the dense index needs from a model."""

    version: str

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray: ...
    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray: ...


@dataclass
class SentenceTransformerEncoder:
    """A sentence-transformers bi-encoder; ``query_prompt`` is prepended to queries (instructions)."""

    model: Any
    version: str
    batch_size: int = 32
    normalize: bool = True
    query_prompt: str | None = None
    document_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        get = getattr(self.model, "get_embedding_dimension", None)
        return int(get() if get else self.model.get_sentence_embedding_dimension())

    def _encode(self, texts: Sequence[str], prompt: str | None, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, prompt=prompt,
            normalize_embeddings=self.normalize, show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Document vectors, float32, one row per text."""
        return self._encode(texts, self.document_prompt, show_progress)

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Query vectors, float32, one row per text."""
        return self._encode(texts, self.query_prompt, show_progress)


def make_encoder(model: Any, version: str, backend: str = "torch", threads: int | None = None,
                 **kw: Any) -> Encoder:
    """An encoder of sentence-transformers ``model`` (registry ``version``) on ``backend``: ``torch``
    (:class:`SentenceTransformerEncoder`), ``onnx`` or ``onnx-int8`` (ONNX Runtime on CPU, whose version
    gets a ``+backend`` suffix so the embedding cache never mixes their vectors); ``threads``: ONNX
    Runtime intra-op threads (torch uses its own setting). ``kw``: batch size, prompts, normalize."""
    from lethe.embedding.onnx import DEFAULT_THREADS, OnnxEncoder, check_backend

    if check_backend(backend) == "torch":
        return SentenceTransformerEncoder(model, version, **kw)
    return OnnxEncoder(model, version, backend=backend, threads=threads or DEFAULT_THREADS, **kw)
