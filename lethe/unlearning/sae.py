"""SAE-guided representation unlearning of documents (METHODS card 9, our adaptation [R]).

Yamashita et al. (2025) define forgetting as the state where the target's internal activation, read
through a sparse autoencoder, is indistinguishable from that of things the model never knew. For a
bi-encoder the "entity" is a forgotten document and the activation its embedding:

1. a sparse autoencoder ``z = ReLU(W_e (e - b_d) + b_e)``, ``e_hat = W_d z + b_d`` (MSE + ``l1`` |z|) is fitted
   on the original model's frozen embeddings of the forgotten, the trained-on ("seen") and never-trained-on
   ("unseen") documents;
2. the features tied to the forget set are those the forgotten documents activate most above the unseen
   ones (``top_features``); ``mu_seen`` / ``mu_unseen`` are the mean codes of the seen / unseen documents;
3. the model is steered so that, on those features, the forgotten documents' codes move to ``mu_unseen``
   and away from ``mu_seen`` (hinged at ``margin``), while retained documents keep their embeddings:
   ``||z_N(d*) - mu_unseen||^2 - gamma min(||z_N(d*) - mu_seen||^2, margin) + w ||e(r) - e_0(r)||^2``.

By default the SAE is fitted inside the call and dropped with it. A workspace can instead keep one SAE per
embedder, fitted on the collection (``lethe train sae``, :mod:`lethe.pipelines.sae`): a registered artifact
whose lineage lists the documents it saw, so a forget request refits it without them (exact) like any other
model; the method then reads its features from that SAE (``SAEGuided(prefit=...)``). Either way it needs
documents nobody trained on (``task.texts`` beyond the training groups) to define "unseen".
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lethe.errors import LetheError
from lethe.training.scorers import BiEncoderScorer
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnResult, UnlearnTask
from lethe.unlearning.registry import register


@dataclass
class SAEConfig:
    """The SAE-guided method's own settings."""

    expansion: int = 4         # dictionary size / embedding size
    l1: float = 1e-3
    sae_steps: int = 400
    sae_lr: float = 1e-3
    top_features: int = 32
    gamma: float = 0.5
    margin: float = 1.0
    retain_weight: float = 10.0
    sample_docs: int = 256     # seen and unseen documents sampled for the SAE and its reference codes


def _sae(dim: int, width: int) -> Any:
    import torch

    class SAE(torch.nn.Module):
        """A ReLU sparse autoencoder with a shared pre-encoder / decoder bias."""

        def __init__(self) -> None:
            super().__init__()
            self.enc = torch.nn.Linear(dim, width)
            self.dec = torch.nn.Linear(width, dim)

        def encode(self, e: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.enc(e - self.dec.bias))

        def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.encode(e)
            return self.dec(z), z

    return SAE()


def fit_sae(emb: Any, cfg: SAEConfig, seed: int = 0) -> Any:
    """A sparse autoencoder fitted (full batch) on frozen embeddings ``emb [N, d]``; frozen on return."""
    import torch

    torch.manual_seed(seed)
    sae = _sae(emb.shape[1], cfg.expansion * emb.shape[1])
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.sae_lr)
    for _ in range(cfg.sae_steps):
        rec, z = sae(emb)
        loss = ((rec - emb) ** 2).sum(-1).mean() + cfg.l1 * z.abs().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae


SAE_WEIGHTS = "sae.pt"
SAE_CONFIG = "sae.json"


def save_sae(sae: Any, folder: Path, cfg: SAEConfig) -> None:
    """Write the SAE's weights and shape (and the settings it was fitted with) into ``folder``."""
    import json

    import torch

    torch.save(sae.state_dict(), folder / SAE_WEIGHTS)
    info = {"dim": sae.enc.in_features, "width": sae.enc.out_features, "config": asdict(cfg)}
    (folder / SAE_CONFIG).write_text(json.dumps(info, sort_keys=True))


def load_sae(folder: Path) -> Any:
    """The frozen SAE :func:`save_sae` wrote into ``folder``."""
    import json

    import torch

    info = json.loads((folder / SAE_CONFIG).read_text())
    sae = _sae(info["dim"], info["width"])
    sae.load_state_dict(torch.load(folder / SAE_WEIGHTS, weights_only=True))
    sae.eval()
    for p in sae.parameters():
        p.requires_grad_(False)
    return sae


def tied_features(z_forget: Any, z_unseen: Any, n: int) -> Any:
    """Indices of the ``n`` features the forgotten documents activate most above the unseen ones."""
    return (z_forget.mean(0) - z_unseen.mean(0)).topk(min(n, z_forget.shape[1])).indices


def steering_loss(z: Any, mu_unseen: Any, mu_seen: Any, gamma: float, margin: float) -> Any:
    """Pull codes to ``mu_unseen``, push them from ``mu_seen`` (hinged at ``margin``); mean over rows."""
    import torch

    pull = ((z - mu_unseen) ** 2).sum(-1)
    push = torch.clamp(((z - mu_seen) ** 2).sum(-1), max=margin)
    return (pull - gamma * push).mean()


@register
class SAEGuided(Method):
    """Steer forgotten documents' SAE codes, on their own features, to those of never-seen documents."""

    name = "sae"

    def __init__(self, scfg: SAEConfig | None = None, prefit: Any | None = None) -> None:
        self.scfg = scfg or SAEConfig()
        self.prefit = prefit  # an SAE fitted on the collection (a registered artifact); None: fit one here

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        import torch

        cfg = cfg or UnlearnConfig()
        if not isinstance(task.scorer, BiEncoderScorer):
            raise LetheError("sae steers a bi-encoder's document embeddings; this model has no document tower")
        forget, seen, unseen = self._documents(task, cfg.seed)
        t0 = time.perf_counter()
        e0 = self._embed(task, forget + seen + unseen, grad=False)
        e0_f, e0_s = e0[: len(forget)], e0[len(forget): len(forget) + len(seen)]
        e0_u = e0[len(forget) + len(seen):]
        if self.prefit is not None and self.prefit.enc.in_features != e0.shape[1]:
            raise LetheError(f"the registered SAE reads {self.prefit.enc.in_features}-dimensional embeddings; this "
                             f"model's are {e0.shape[1]}-dimensional (fit an SAE for this model: lethe train sae)")
        sae = self.prefit if self.prefit is not None else fit_sae(e0, self.scfg, cfg.seed)
        z_f, z_s, z_u = sae.encode(e0_f), sae.encode(e0_s), sae.encode(e0_u)
        feats = tied_features(z_f, z_u, self.scfg.top_features)
        mu_u, mu_s = z_u.mean(0)[feats], z_s.mean(0)[feats]
        torch.manual_seed(cfg.seed)
        module = task.scorer.module
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        module.eval()
        rng, losses = random.Random(cfg.seed), []
        for _ in range(cfg.steps):
            fi = rng.sample(range(len(forget)), min(cfg.forget_batch, len(forget)))
            ri = rng.sample(range(len(seen)), min(cfg.retain_batch, len(seen)))
            z = sae.encode(self._embed(task, [forget[i] for i in fi]))[:, feats]
            keep = ((self._embed(task, [seen[i] for i in ri]) - e0_s[ri]) ** 2).sum(-1).mean()
            loss = steering_loss(z, mu_u, mu_s, self.scfg.gamma, self.scfg.margin) + self.scfg.retain_weight * keep
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                break
        module.eval()
        with torch.no_grad():
            z_after = sae.encode(self._embed(task, forget, grad=False))[:, feats]
        info = {"features": int(len(feats)), "dictionary": int(sae.enc.out_features),
                "sae": "registered" if self.prefit is not None else "fitted in the call",
                "dist_unseen_before": round(float(((z_f[:, feats] - mu_u) ** 2).sum(-1).mean()), 5),
                "dist_unseen_after": round(float(((z_after - mu_u) ** 2).sum(-1).mean()), 5)}
        return UnlearnResult(task.scorer, self.name, time.perf_counter() - t0, False, losses, info)

    def _documents(self, task: UnlearnTask, seed: int) -> tuple[list[str], list[str], list[str]]:
        """Forgotten, seen (in the remaining training groups) and unseen (in no group) documents with text."""
        forget = sorted(d for d in task.sets.docs if d in task.texts)
        if not forget:
            raise LetheError("sae: nothing to forget (no forgotten document's text is at hand)")
        trained = {d for e in [*task.sets.forget, *task.sets.remaining] for d in (e.positive, *e.negatives)}
        seen = sorted(trained & set(task.texts) - task.sets.docs)
        unseen = sorted(set(task.texts) - trained - task.sets.docs)
        if not seen or not unseen:
            raise LetheError("sae needs documents the model trained on and documents it never saw (to define "
                             "'unseen'); give the task the texts of documents outside its training groups")
        rng = random.Random(seed)
        n = self.scfg.sample_docs
        return forget, rng.sample(seen, min(n, len(seen))), rng.sample(unseen, min(n, len(unseen)))

    @staticmethod
    def _embed(task: UnlearnTask, ids: list[str], grad: bool = True) -> Any:
        import torch

        with torch.set_grad_enabled(grad):
            return task.scorer.embed([task.texts[d] for d in ids])
