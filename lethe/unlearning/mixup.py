"""Label unlearning via manifold mixup: forget *relevance judgements*, keep the documents (METHODS card 10).

Gu et al. (ICLR 2026) remove a label from a vertically split model with a handful of samples, by
gradient ascent on mixup interpolants of their embeddings, then a short recovery on mixup of retained
samples. A bi-encoder is split the same way (query tower, document tower), and a relevance judgement
``(q, d)`` is the label: the request is "this pair must no longer be learned as relevant" while ``q`` and
``d`` stay in the collection (a withdrawn click, a retracted qrels row).

Each step, on the forget groups (the groups that trained a forgotten pair as relevant; column 0 is the
pair's document):

* **forgetting signal** — for every two forget groups ``i < j`` and ``lambda`` in ``lambdas``, the
  interpolated group ``(lambda u_i + (1 - lambda) u_j, lambda V_i + (1 - lambda) V_j)`` (``u`` the query
  embedding, ``V`` the candidates'); gradient *ascent* on the InfoNCE of the real and the mixed groups;
* **recovery** — retained groups mixed with a random other retained group, ``lambda ~ Beta(1, 1)`` per
  group, gradient descent on the InfoNCE of the real and the mixed retained groups.

Its oracle is the model trained without those groups (``split_examples(..., labels=...)``). Cross-encoders
have no separate towers to interpolate and are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lethe.errors import LetheError
from lethe.training.losses import infonce
from lethe.training.pools import MinedExample
from lethe.training.scorers import BiEncoderScorer
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnTask
from lethe.unlearning.registry import register


@dataclass
class MixupConfig:
    """Label mixup's own settings."""

    lambdas: tuple[float, ...] = (0.25, 0.5, 0.75)
    retain_weight: float = 1.0
    max_mixed: int = 48        # interpolated forget groups per step, at most (pairs x lambdas grow fast)


def group_embeddings(scorer: BiEncoderScorer, groups: Sequence[MinedExample], queries: Any, texts: Any) -> tuple:
    """``u [B, dim]`` query embeddings and ``V [B, K, dim]`` candidate embeddings (positive first)."""
    from lethe.embedding.train import embed_texts

    prompt = scorer.query_prompt or ""
    u = embed_texts(scorer.model, [f"{prompt}{queries[e.query_id]}" for e in groups], scorer.max_length)
    cands = [[e.positive, *e.negatives] for e in groups]
    v = embed_texts(scorer.model, [texts[d] for row in cands for d in row], scorer.max_length)
    return u, v.view(len(groups), len(cands[0]), -1)


def scores(u: Any, v: Any) -> Any:
    """``S[b, k] = <u_b, V_bk>``."""
    return (u.unsqueeze(1) * v).sum(-1)


def pairwise_mix(u: Any, v: Any, lambdas: Sequence[float], limit: int) -> tuple[Any, Any]:
    """Interpolants of every two groups ``i < j`` at each ``lambda`` (the first ``limit``)."""
    import torch

    us, vs = [], []
    for i in range(len(u)):
        for j in range(i + 1, len(u)):
            for lam in lambdas:
                us.append(lam * u[i] + (1 - lam) * u[j])
                vs.append(lam * v[i] + (1 - lam) * v[j])
    if not us:
        return u[:0], v[:0]
    return torch.stack(us[:limit]), torch.stack(vs[:limit])


def beta_mix(u: Any, v: Any, generator: Any = None) -> tuple[Any, Any]:
    """Each group mixed with a random other, ``lambda ~ Beta(1, 1)`` (uniform) per group."""
    import torch

    perm = torch.randperm(len(u), generator=generator)
    lam = torch.rand(len(u), generator=generator)
    return lam[:, None] * u + (1 - lam[:, None]) * u[perm], lam[:, None, None] * v + (1 - lam[:, None, None]) * v[perm]


@register
class LabelMixup(Method):
    """Ascent on mixup interpolants of the forget groups, recovery on mixup of retained groups."""

    name = "label_mixup"

    def __init__(self, mcfg: MixupConfig | None = None) -> None:
        self.mcfg = mcfg or MixupConfig()

    def prepare(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        import torch

        if not isinstance(task.scorer, BiEncoderScorer):
            raise LetheError("label_mixup interpolates query and document embeddings; this model has no separate "
                             "towers (use grad_diff or relabel on its forget pairs)")
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.mixed = 0

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        import torch

        u, v = group_embeddings(task.scorer, forget, task.queries, task.texts)
        mu, mv = pairwise_mix(u, v, self.mcfg.lambdas, self.mcfg.max_mixed)
        self.mixed += len(mu)
        loss = -infonce(scores(torch.cat([u, mu]), torch.cat([v, mv])), task.scorer.scale)
        if retain:
            ur, vr = group_embeddings(task.scorer, retain, task.queries, task.texts)
            xu, xv = beta_mix(ur, vr, self.generator)
            rec = infonce(scores(torch.cat([ur, xu]), torch.cat([vr, xv])), task.scorer.scale)
            loss = loss + self.mcfg.retain_weight * rec
        return loss

    def info(self) -> dict[str, Any]:
        return {"mixed_forget_groups": self.mixed}
