"""OFMU: bi-level unlearning — forgetting as the inner problem, retention as the outer (METHODS card 7).

Asif & Amiri (ICLR 2026) maximise ``Phi(theta) = L_f - beta Sim(grad L_f, grad L_r)`` in an inner loop and
minimise ``F(theta) = L_r + rho ||grad Phi||^2`` in the outer one, with ``rho`` growing by ``gamma`` per
outer iteration. No official code exists; this is the card's adaptation to retrievers:

* ``L_f`` / ``L_r`` are the InfoNCE of the forget / retain groups (any :class:`~lethe.training.scorers.Scorer`:
  bi-encoder or cross-encoder);
* **inner** (``UnlearnConfig.ofmu_inner`` steps of ascent): the similarity term is replaced by its first-order
  surrogate [R], gradient surgery — where the forget gradient conflicts with retention (``g_f . g_r > 0``:
  ascending ``L_f`` would also raise ``L_r``) its component along ``g_r`` is removed before the step;
* **outer** (one step of descent per iteration): ``grad F = g_r + 2 rho H_f g_f``, the penalty's
  Hessian-vector product by double back-propagation (``Phi`` read as ``L_f`` there: the gradient of the
  cosine term would need third derivatives), so the outer step pulls toward a stationary point of the
  forgetting while it restores the retain loss;
* inner and outer steps have their own Adam states (one optimiser would average ascent and descent moments).

Cost per outer iteration: ``2 x ofmu_inner`` backward passes plus one double backward (about 3): the
paper reports 2.9-4.2 x gradient ascent.
"""

from __future__ import annotations

import random
import time
from typing import Any

from lethe.errors import LetheError
from lethe.training.losses import infonce
from lethe.training.scorers import group_scores
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnResult, UnlearnTask, cycler, retain_loss
from lethe.unlearning.registry import register


def flat_grads(loss: Any, params: list[Any], create_graph: bool = False) -> list[Any]:
    """``d loss / d p`` for every parameter (zeros for parameters the loss does not use)."""
    import torch

    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def surgery(g_f: list[Any], g_r: list[Any]) -> tuple[list[Any], bool]:
    """``g_f`` without its component along ``g_r`` when the two conflict (``g_f . g_r > 0``); whether it did."""
    dot = sum(float((a * b).sum()) for a, b in zip(g_f, g_r))
    norm2 = sum(float((b * b).sum()) for b in g_r)
    if dot <= 0 or norm2 == 0:
        return g_f, False
    c = dot / norm2
    return [a - c * b for a, b in zip(g_f, g_r)], True


@register
class OFMU(Method):
    """Inner ascent on the forget loss orthogonal to retention, outer descent on retain + stationarity penalty."""

    name = "ofmu"

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        import torch

        cfg = cfg or UnlearnConfig()
        if not task.sets.forget:
            raise LetheError(f"{self.name}: nothing to forget (no training group has the forgotten data)")
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        module = task.scorer.module
        module.eval()  # dropout off: deterministic scores, exact gradients (as in the other methods)
        params = [p for p in module.parameters() if p.requires_grad]
        inner = torch.optim.Adam(params, lr=cfg.lr)
        outer = torch.optim.Adam(params, lr=cfg.lr)
        rng = random.Random(cfg.seed)
        forget, retain = cycler(task.sets.forget, rng), cycler(task.sets.retain, rng)
        draw = lambda: self._batches(task, cfg, forget, retain)  # noqa: E731
        rho, losses, conflicts, penalties = cfg.ofmu_rho0, [], 0, []
        for _ in range(cfg.steps):
            for _ in range(cfg.ofmu_inner):
                conflicts += self._inner_step(task, params, inner, *draw())
            loss, pen = self._outer_step(task, params, outer, rho, *draw())
            losses.append(loss)
            penalties.append(round(pen, 6))
            rho *= cfg.ofmu_gamma
            if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                break
        module.eval()
        info = {"rho_final": rho, "inner_steps": cfg.ofmu_inner * len(losses), "conflicts": conflicts,
                "penalties": penalties}
        return UnlearnResult(task.scorer, self.name, time.perf_counter() - t0, False, losses, info)

    @staticmethod
    def _batches(task: UnlearnTask, cfg: UnlearnConfig, forget: Any, retain: Any) -> tuple[list, list]:
        fb = [next(forget) for _ in range(min(cfg.forget_batch, len(task.sets.forget)))]
        rb = [next(retain) for _ in range(min(cfg.retain_batch, len(task.sets.retain)))] if task.sets.retain else []
        return fb, rb

    @staticmethod
    def _forget_loss(task: UnlearnTask, fb: list) -> Any:
        return infonce(group_scores(task.scorer, fb, task.queries, task.texts), task.scorer.scale)

    def _inner_step(self, task: UnlearnTask, params: list[Any], opt: Any, fb: list, rb: list) -> bool:
        """One ascent step on ``L_f`` after gradient surgery against ``g_r``; whether they conflicted."""
        import torch

        g_f = flat_grads(self._forget_loss(task, fb), params)
        g_r = flat_grads(retain_loss(task, rb), params) if rb else [torch.zeros_like(p) for p in params]
        d, conflict = surgery(g_f, g_r)
        self._apply(params, opt, [-x for x in d])  # ascent: the optimiser descends along -d
        return conflict

    def _outer_step(self, task: UnlearnTask, params: list[Any], opt: Any, rho: float, fb: list,
                    rb: list) -> tuple[float, float]:
        """One descent step on ``L_r + rho ||grad L_f||^2``; returns (that loss, the penalty)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
            g_f = flat_grads(self._forget_loss(task, fb), params, create_graph=True)
            penalty = sum((g * g).sum() for g in g_f)
            l_r = retain_loss(task, rb)
            grads = flat_grads(l_r + rho * penalty, params)
        self._apply(params, opt, grads)
        return float(l_r.detach()) + rho * float(penalty.detach()), float(penalty.detach())

    @staticmethod
    def _apply(params: list[Any], opt: Any, grads: list[Any], clip: float = 1.0) -> None:
        import torch

        for p, g in zip(params, grads):
            p.grad = g.detach()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad()
