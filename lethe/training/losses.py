"""Losses shared by the trainers (docs/training.md): each takes a ``[B, K]`` score matrix whose column 0
is the positive (``lethe.training.scorers.group_scores``)."""

from __future__ import annotations

from typing import Any


def infonce(s: Any, scale: float) -> Any:
    """Cross-entropy of column 0 within each group."""
    import torch

    return torch.nn.functional.cross_entropy(s * scale, torch.zeros(s.shape[0], dtype=torch.long))


def log_p_target(s: Any, scale: float) -> Any:
    """``log P(d_0 | q)`` per group."""
    import torch

    return torch.log_softmax(s * scale, dim=-1)[:, 0]


def margin_flat(s: Any) -> Any:
    """``mean_b (max_k S - mean_k S)^2`` (zero iff every candidate scores the same)."""
    return ((s.max(dim=-1).values - s.mean(dim=-1)) ** 2).mean()
