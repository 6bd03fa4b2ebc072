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


def group_nll(logits: Any, sizes: list[int], bce_weight: float = 0.0) -> Any:
    """Listwise softmax cross-entropy over groups of different sizes laid end to end in a 1-d ``logits``
    (each group's first entry is the positive), plus ``bce_weight`` x pointwise BCE; the mean over groups."""
    import torch

    loss = torch.zeros((), dtype=logits.dtype)
    start = 0
    for n in sizes:
        group = logits[start : start + n]
        loss = loss - torch.log_softmax(group, dim=0)[0]
        if bce_weight:
            target = torch.zeros(n, dtype=group.dtype)
            target[0] = 1.0
            loss = loss + bce_weight * torch.nn.functional.binary_cross_entropy_with_logits(group, target)
        start += n
    return loss / len(sizes)


def margin_mse(rows: list[Any], teacher: list[Any]) -> Any:
    """MarginMSE (Hofstätter et al. 2020) over groups of different sizes: per group (positive first), the
    mean over its negatives of ``((s_p - s_n) - (t_p - t_n))^2``; the mean over groups. ``rows``: the
    student's 1-d scores per group (differentiable); ``teacher``: the teacher's, same shapes."""
    import torch

    losses = []
    for s, t in zip(rows, teacher):
        t = torch.as_tensor(t, dtype=s.dtype, device=s.device)
        losses.append(((s[0] - s[1:]) - (t[0] - t[1:])).pow(2).mean())
    return torch.stack(losses).mean()


def weighted_nll(logits: Any, input_ids: Any, weights: Any) -> Any:
    """``-sum(w_i log p(y_i | y_<i)) / #(w_i > 0)`` with next-token shift; tensors of one sequence."""
    import torch

    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    tgt = input_ids[1:]
    w = weights[1:]
    nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return (w * nll).sum() / (w > 0).sum().clamp(min=1)


def ranknet(s: Any) -> Any:
    """FIRST's weighted RankNet over 1-d scores in label order (best first):
    ``sum_{a<b} w_ab softplus(s_b - s_a) / sum w_ab`` with ``w_ab = 1/(a+b)`` (1-based ranks)."""
    import torch

    n = s.shape[0]
    rank = torch.arange(1, n + 1, device=s.device, dtype=torch.float32)
    w = torch.triu(1.0 / (rank[:, None] + rank[None, :]), diagonal=1)  # a (better) < b (worse)
    pair = torch.nn.functional.softplus(s[None, :] - s[:, None])
    return (w * pair).sum() / w.sum().clamp(min=1e-12)


def elr_penalty(p: Any, t: Any) -> Any:
    """Early-learning regularisation (Liu et al. 2020): ``mean_b log(1 - <t_b, p_b>)`` over ``[B, K]``
    predictions ``p`` (differentiable) and targets ``t`` (their EMA, detached); lower when ``p`` agrees
    with ``t``. Unweighted: the trainer adds ``lam`` x this (``lethe.training.elr``)."""
    return (1.0 - (t * p).sum(dim=-1)).log().mean()


def npo(log_ratio: Any, beta: float) -> Any:
    """Negative preference optimisation (Zhang et al. 2024) on ``log p_model - log p_reference`` of the
    forget targets: ``-(2/beta) mean log sigmoid(-beta * ratio)``."""
    import torch

    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * log_ratio).mean()
