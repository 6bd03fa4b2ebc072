"""LAF: label-agnostic forgetting — only the forgotten documents, no queries, no judgements (METHODS card 11).

Shen et al. (ICLR 2024) unlearn a feature extractor from its inputs alone. Here the extractor is a
bi-encoder's document tower, for the request "remove these documents from an embedder whose training pairs
are no longer known":

1. **variational approximation** — two small VAEs are fitted on the *original* model's frozen document
   embeddings: ``h_r`` on retained documents (the store's other documents: the paper too approximates the
   remaining-data distribution with the training inputs), ``h_u`` on the forgotten ones;
2. **extractor unlearning** — with ``m_r(x) = ||h_r(e(x)) - e(x)||^2`` and ``m_u`` likewise,
   ``L_UE = sum_retain exp(m_r / (m_r + 1)) - sum_forget exp(m_u / (m_u + 1))``: retained embeddings stay
   where the retain VAE explains them, forgotten ones leave the region the forget VAE reconstructs;
3. **representation alignment** (alternated with 2 on every batch) — with ``c = 1 - cos(e_theta(x), e_0(x))``,
   ``L_RA = sum_i log(exp(c_r,i) / sum_j exp(c_u,j / tau))``: retained embeddings pulled back to the
   original's, forgotten ones pushed away from theirs.

The VAEs are fitted and dropped inside the call (nothing of them is kept). Cross-encoders have no document
tower to move; they are refused with a clear error.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from lethe.errors import LetheError
from lethe.training.scorers import BiEncoderScorer
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnResult, UnlearnTask
from lethe.unlearning.registry import register


@dataclass
class LAFConfig:
    """LAF's own settings (``UnlearnConfig.steps`` alternating batches, ``lr`` the extractor-unlearning rate)."""

    latent: int = 16
    hidden: int = 128
    vae_steps: int = 300
    vae_lr: float = 1e-3
    kl_weight: float = 0.025
    tau: float = 5.0
    ra_scale: float = 4.0      # the alignment step's rate / the extractor-unlearning step's (card: 4e-5 / 1e-5)
    retain_docs: int = 256     # retained documents sampled for the retain VAE and the retain batches


def _vae(dim: int, latent: int, hidden: int) -> Any:
    import torch

    class VAE(torch.nn.Module):
        """``e -> (mu, logvar) -> z -> e_hat``; reconstruction from ``mu`` when not sampling."""

        def __init__(self) -> None:
            super().__init__()
            nn = torch.nn
            self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
            self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))

        def forward(self, e: torch.Tensor, sample: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            mu, logvar = self.enc(e).chunk(2, dim=-1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
            return self.dec(z), mu, logvar

    return VAE()


def fit_vae(emb: Any, cfg: LAFConfig, seed: int = 0) -> Any:
    """A VAE fitted on frozen embeddings ``emb`` ``[N, d]``: MSE (summed over dims) + ``kl_weight`` KL."""
    import torch

    torch.manual_seed(seed)
    vae = _vae(emb.shape[1], cfg.latent, cfg.hidden)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    for _ in range(cfg.vae_steps):
        rec, mu, logvar = vae(emb, sample=True)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1).mean()
        loss = ((rec - emb) ** 2).sum(-1).mean() + cfg.kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae


def reconstruction_error(vae: Any, emb: Any) -> Any:
    """``m(x) = ||h(e) - e||^2`` per row (deterministic reconstruction)."""
    return ((vae(emb)[0] - emb) ** 2).sum(-1)


def extractor_loss(m_r: Any, m_u: Any) -> Any:
    """``L_UE = sum exp(m_r / (m_r + 1)) - sum exp(m_u / (m_u + 1))``."""
    return (m_r / (m_r + 1)).exp().sum() - (m_u / (m_u + 1)).exp().sum()


def alignment_loss(e_r: Any, e0_r: Any, e_u: Any, e0_u: Any, tau: float) -> Any:
    """``L_RA = sum_i log(exp(c_r,i) / sum_j exp(c_u,j / tau))`` with ``c = 1 - cos(e, e_0)``."""
    import torch

    cos = torch.nn.functional.cosine_similarity
    c_r, c_u = 1 - cos(e_r, e0_r, dim=-1), 1 - cos(e_u, e0_u, dim=-1)
    return (c_r - torch.logsumexp(c_u / tau, dim=0)).sum()


@register
class LAF(Method):
    """Label-agnostic forgetting of documents from a bi-encoder (no queries, no judgements needed)."""

    name = "laf"

    def __init__(self, lcfg: LAFConfig | None = None) -> None:
        self.lcfg = lcfg or LAFConfig()

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        import torch

        cfg = cfg or UnlearnConfig()
        if not isinstance(task.scorer, BiEncoderScorer):
            raise LetheError("laf moves a bi-encoder's document embeddings; this model has no document tower "
                             "(use a method with labels, e.g. relabel or grad_diff)")
        forget = sorted(d for d in task.sets.docs if d in task.texts)
        if not forget:
            raise LetheError("laf: nothing to forget (no forgotten document's text is at hand)")
        t0 = time.perf_counter()
        rng = random.Random(cfg.seed)
        others = sorted(d for d in task.texts if d not in task.sets.docs)
        retain = rng.sample(others, min(self.lcfg.retain_docs, len(others)))
        if not retain:
            raise LetheError("laf needs retained documents to keep the embedding space in place")
        e0 = self._embed(task, forget + retain, grad=False)
        e0_u, e0_r = e0[: len(forget)], e0[len(forget):]
        h_u, h_r = fit_vae(e0_u, self.lcfg, cfg.seed), fit_vae(e0_r, self.lcfg, cfg.seed + 1)
        torch.manual_seed(cfg.seed)
        module = task.scorer.module
        params = [p for p in module.parameters() if p.requires_grad]
        ue = torch.optim.Adam(params, lr=cfg.lr)
        ra = torch.optim.Adam(params, lr=cfg.lr * self.lcfg.ra_scale)
        module.eval()
        losses = []
        for _ in range(cfg.steps):
            fu = rng.sample(range(len(forget)), min(cfg.forget_batch, len(forget)))
            fr = rng.sample(range(len(retain)), min(cfg.retain_batch, len(retain)))
            texts_u, texts_r = [forget[i] for i in fu], [retain[i] for i in fr]
            l_ue = self._step(ue, params, lambda tu=texts_u, tr=texts_r: extractor_loss(
                reconstruction_error(h_r, self._embed(task, tr)), reconstruction_error(h_u, self._embed(task, tu))))
            l_ra = self._step(ra, params, lambda tu=texts_u, tr=texts_r, iu=fu, ir=fr: alignment_loss(
                self._embed(task, tr), e0_r[ir], self._embed(task, tu), e0_u[iu], self.lcfg.tau))
            losses.append(l_ue + l_ra)
            if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                break
        module.eval()
        return UnlearnResult(task.scorer, self.name, time.perf_counter() - t0, False, losses,
                             {"forget_docs": len(forget), "retain_docs": len(retain), "labels_used": False})

    @staticmethod
    def _embed(task: UnlearnTask, ids: list[str], grad: bool = True) -> Any:
        import torch

        with torch.set_grad_enabled(grad):
            return task.scorer.embed([task.texts[d] for d in ids])

    @staticmethod
    def _step(opt: Any, params: list[Any], loss_fn: Any, clip: float = 1.0) -> float:
        import torch

        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad()
        return float(loss.detach())
