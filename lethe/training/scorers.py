"""Differentiable candidate scores for the models that unlearn: bi-encoders and cross-encoders.

Every method works on the candidate-score matrix ``S[b, k] = s(q_b, d_bk)`` of a batch of training
groups (column 0: the group's positive), the analogue of an LM's next-token logits (card 0):
``P(d|q) = softmax_k(S / tau)``. ``scale`` is ``1/tau`` (20 for cosine bi-encoders, 1 for logits).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lethe.training.pools import MinedExample


@dataclass
class BiEncoderScorer:
    """A sentence-transformers bi-encoder: ``s(q, d) = <e(q), e(d)>`` (cosine for normalised models)."""

    model: Any
    max_length: int = 256
    query_prompt: str | None = None
    scale: float = 20.0

    @property
    def module(self) -> Any:
        return self.model

    def scores(self, queries: Sequence[str], cands: Sequence[Sequence[str]]) -> Any:
        """``[B, K]`` scores, differentiable when the model is in train mode."""
        from lethe.embedding.train import embed_texts

        k = len(cands[0])
        q = embed_texts(self.model, [f"{self.query_prompt or ''}{t}" for t in queries], self.max_length)
        d = embed_texts(self.model, [t for row in cands for t in row], self.max_length)
        return (q.unsqueeze(1) * d.view(len(queries), k, -1)).sum(-1)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        """``[N, dim]`` document embeddings, in batches; differentiable unless under ``torch.no_grad``."""
        import torch

        from lethe.embedding.train import embed_texts

        return torch.cat([embed_texts(self.model, list(texts[i : i + batch_size]), self.max_length)
                          for i in range(0, len(texts), batch_size)])

    def embed_docs(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Frozen document embeddings (for the probe attack)."""
        import torch

        if not len(texts):
            return np.zeros((0, 1), dtype=np.float32)
        with torch.no_grad():
            return self.embed(texts, batch_size).float().numpy()

    def copy(self) -> BiEncoderScorer:
        return BiEncoderScorer(copy.deepcopy(self.model), self.max_length, self.query_prompt, self.scale)


@dataclass
class CrossEncoderScorer:
    """A sentence-transformers ``CrossEncoder``: ``s(q, d)`` is the pair's logit."""

    model: Any
    max_length: int = 192
    scale: float = 1.0

    @property
    def module(self) -> Any:
        return self.model.model

    def scores(self, queries: Sequence[str], cands: Sequence[Sequence[str]]) -> Any:
        """``[B, K]`` logits."""
        from lethe.ranking.cross_encoder import group_logits

        k = len(cands[0])
        return group_logits(self.model, list(zip(queries, cands)), self.max_length).view(len(queries), k)

    def copy(self) -> CrossEncoderScorer:
        return CrossEncoderScorer(copy.deepcopy(self.model), self.max_length, self.scale)


Scorer = BiEncoderScorer | CrossEncoderScorer


def group_scores(scorer: Scorer, batch: Sequence[MinedExample], queries: Mapping[str, str],
                 texts: Mapping[str, str]) -> Any:
    """``S[b, k]`` for training groups (column 0 = positive)."""
    return scorer.scores([queries[e.query_id] for e in batch],
                         [[texts[e.positive], *(texts[d] for d in e.negatives)] for e in batch])


def pair_scores(scorer: Scorer, pairs: Sequence[tuple[str, str]], queries: Mapping[str, str],
                texts: Mapping[str, str], batch_size: int = 32) -> np.ndarray:
    """``s(q, d)`` for (query id, doc id) pairs, without gradients."""
    import torch

    out = []
    scorer.module.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            s = scorer.scores([queries[q] for q, _ in chunk], [[texts[d]] for _, d in chunk])
            out.append(s[:, 0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
