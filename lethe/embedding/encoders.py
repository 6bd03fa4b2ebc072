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
