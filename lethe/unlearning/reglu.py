"""REGLU: representation-guided LoRA initialisation + orthogonal-complement regulariser (METHODS card 5).

For every targeted linear layer ``W0`` (attention query/key/value):

1. **RILA** — sum-pooled layer outputs on forget and retain groups give ``C_f = H_f'H_f/N + eps I`` and
   ``C_r``; the top-``r`` eigenvectors ``Q`` of ``(1 - beta) C_f - beta C_r`` (high forget energy, low
   retain energy) initialise ``B = Q``, ``A = Q' W0``, and ``W0 <- W0 - s B A`` keeps the function
   unchanged at step 0;
2. **ROL** — ``sum_layers ||B' P||_F^2`` with ``P`` the top-``k`` eigenvectors of ``C_r`` keeps every
   update out of the retain representation subspace;
3. the forget loss is the inverse-hinge analogue on the candidate distribution,
   ``max(0, 1 + P(d*|q) - max_{d != d*} P(d|q))``, plus the retain InfoNCE.

The adapter is merged into the weights at the end (so dropping it cannot bring the old model back).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lethe.training.scorers import group_scores
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnResult, UnlearnTask, optimise, retain_loss
from lethe.unlearning.registry import register

TARGETS = ("query", "key", "value", "q_proj", "k_proj", "v_proj")


@dataclass
class ReGLUConfig:
    """REGLU's own settings (the shared ones come from :class:`UnlearnConfig`)."""

    rank: int = 8
    beta: float = 0.7
    rol_rank: int = 64
    rol_weight: float = 0.5
    retain_weight: float = 1.0
    eps: float = 1e-4
    samples: int = 64


def _lora_linear_class() -> Any:
    import torch

    class LoRALinear(torch.nn.Module):
        """``W0 x + b + s * B (A x)`` with ``W0`` frozen."""

        def __init__(self, base: torch.nn.Linear, b: torch.Tensor, a: torch.Tensor, scale: float) -> None:
            super().__init__()
            self.base = base
            self.base.weight.requires_grad_(False)
            if self.base.bias is not None:
                self.base.bias.requires_grad_(False)
            self.lora_B = torch.nn.Parameter(b.clone())
            self.lora_A = torch.nn.Parameter(a.clone())
            self.scale = scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T

        def merged(self) -> torch.nn.Linear:
            with torch.no_grad():
                self.base.weight.add_(self.scale * self.lora_B @ self.lora_A)
            self.base.weight.requires_grad_(True)
            if self.base.bias is not None:
                self.base.bias.requires_grad_(True)
            return self.base

    return LoRALinear


def target_linears(module: Any) -> dict[str, Any]:
    """The attention projections to adapt, by qualified name."""
    import torch

    return {n: m for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS}


def pooled_outputs(task: UnlearnTask, groups: list, layers: dict[str, Any]) -> dict[str, Any]:
    """Per layer: ``H`` (n_sequences x d_out), the layer's outputs sum-pooled over tokens."""
    import torch

    store: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: store[n].append(out.detach().sum(dim=-2).double()))
             for n, m in layers.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(groups), 8):
                group_scores(task.scorer, groups[i : i + 8], task.queries, task.texts)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat([t.reshape(-1, t.shape[-1]) for t in v]) for n, v in store.items()}


def _second_moment(h: Any, eps: float) -> Any:
    import torch

    return h.T @ h / max(1, h.shape[0]) + eps * torch.eye(h.shape[1], dtype=h.dtype)


def _top_eigvecs(c: Any, k: int) -> Any:
    import torch

    vals, vecs = torch.linalg.eigh(c)
    return vecs[:, torch.argsort(vals, descending=True)[:k]]


@register
class ReGLU(Method):
    """Representation-guided LoRA init (RILA) + retain-orthogonal regulariser (ROL) + inverse hinge."""

    name = "reglu"
    lr_scale = 10.0

    def __init__(self, rcfg: ReGLUConfig | None = None) -> None:
        self.rcfg = rcfg or ReGLUConfig()

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        cfg = cfg or UnlearnConfig()
        t0 = time.perf_counter()
        self.adapters, self.bases = self._attach(task)
        try:
            losses = optimise(task, cfg, self.loss)
        finally:
            self._merge(task)
        return UnlearnResult(task.scorer, self.name, time.perf_counter() - t0, False, losses,
                             {"layers": len(self.bases), "rank": self.rcfg.rank})

    def _attach(self, task: UnlearnTask) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        rc = self.rcfg
        module = task.scorer.module
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        layers = target_linears(module)
        h_f = pooled_outputs(task, list(task.sets.forget)[: rc.samples], layers)
        h_r = pooled_outputs(task, list(task.sets.retain)[: rc.samples], layers)
        lora_cls = _lora_linear_class()
        adapters, bases = {}, {}
        for name, lin in layers.items():
            c_f, c_r = _second_moment(h_f[name], rc.eps), _second_moment(h_r[name], rc.eps)
            r = min(rc.rank, lin.out_features)
            q = _top_eigvecs((1 - rc.beta) * c_f - rc.beta * c_r, r).to(lin.weight.dtype)
            a = q.T @ lin.weight.detach()
            scale = 2.0  # lora_alpha / r with alpha = 2r
            with torch.no_grad():
                lin.weight.sub_(scale * q @ a)
            adapters[name] = lora_cls(lin, q, a, scale)
            bases[name] = _top_eigvecs(c_r, min(rc.rol_rank, lin.out_features // 4)).to(lin.weight.dtype)
            _set_module(module, name, adapters[name])
        return adapters, bases

    def _merge(self, task: UnlearnTask) -> None:
        module = task.scorer.module
        for name, ad in self.adapters.items():
            _set_module(module, name, ad.merged())
        for p in module.parameters():
            p.requires_grad_(True)

    def loss(self, task: UnlearnTask, forget: list, retain: list, cfg: UnlearnConfig) -> Any:
        import torch

        s_f = group_scores(task.scorer, forget, task.queries, task.texts)
        p = torch.softmax(s_f * task.scorer.scale, dim=-1)
        ihl = torch.clamp(1 + p[:, 0] - p[:, 1:].max(dim=-1).values, min=0).mean()
        rol = sum(((ad.lora_B.T @ self.bases[n]) ** 2).sum() for n, ad in self.adapters.items())
        return ihl + self.rcfg.retain_weight * retain_loss(task, retain) + self.rcfg.rol_weight * rol


def _set_module(root: Any, name: str, new: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
