"""FIT: continual unlearning of a stream of requests — Filter, Importance, Targeted layers (METHODS card 8).

One :class:`FIT` instance handles requests one after another on the current model and keeps a memory
of the embeddings of everything already forgotten:

* **F — redundancy filtering**: a forget group whose positive is a near-duplicate (cosine >= ``tau``)
  of something already forgotten is kept only if dropping it changes the request's forget loss by more
  than ``epsilon``; re-forgetting it would over-suppress what neighbours share;
* **I — importance-aware loss**: importance = norm of the gradient of the request's InfoNCE w.r.t. the
  input token embeddings, relative to the same norm on retain groups [R: the paper's absolute
  thresholds are model-specific]. High (``>= hi``): NPO + retain; middle: NPO; low: random-label
  fine-tuning (each forget group's target replaced by a random other candidate);
* **T — targeted layers**: each transformer layer is zeroed in turn and scored by the change of the
  forget loss; only the top ``k`` layers are updated for this request.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lethe.training.losses import infonce
from lethe.training.scorers import group_scores
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnResult, UnlearnTask, optimise, retain_loss
from lethe.unlearning.methods import NPO
from lethe.unlearning.registry import register


@dataclass
class FITConfig:
    """FIT's own settings."""

    tau: float = 0.9
    epsilon: float = 0.2
    hi: float = 2.0
    lo: float = 1.0
    top_layers: int = 2


@dataclass
class FITState:
    """Memory across requests: embeddings of forgotten documents; what each request chose."""

    memory: list[np.ndarray] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def layer_stack(module: Any) -> tuple[str, Any]:
    """The longest ``ModuleList`` of transformer layers (name, list)."""
    import torch

    best = ("", None)
    for name, mod in module.named_modules():
        is_stack = isinstance(mod, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers")
        if is_stack and (best[1] is None or len(mod) > len(best[1])):
            best = (name, mod)
    return best


def _forget_loss(task: UnlearnTask, groups: list) -> float:
    import torch

    with torch.no_grad():
        return float(infonce(group_scores(task.scorer, groups, task.queries, task.texts), task.scorer.scale))


def layer_attribution(task: UnlearnTask, groups: list) -> list[float]:
    """Per layer: |forget loss with the layer zeroed - forget loss| (parameters restored after)."""
    import torch

    _, stack = layer_stack(task.scorer.module)
    if stack is None:
        return []
    base = _forget_loss(task, groups)
    out = []
    for layer in stack:
        saved = [p.detach().clone() for p in layer.parameters()]
        with torch.no_grad():
            for p in layer.parameters():
                p.zero_()
        out.append(abs(_forget_loss(task, groups) - base))
        with torch.no_grad():
            for p, s in zip(layer.parameters(), saved):
                p.copy_(s)
    return out


def input_gradient_norm(task: UnlearnTask, groups: list) -> float:
    """Norm of d InfoNCE / d (input token embeddings), per group."""
    emb = task.scorer.module.get_input_embeddings() if hasattr(task.scorer.module, "get_input_embeddings") else None
    if emb is None:
        emb = next(m for n, m in task.scorer.module.named_modules() if n.endswith("word_embeddings"))
    grads: list[Any] = []
    outs: list[Any] = []

    def hook(_m: Any, _i: Any, out: Any) -> None:
        out.retain_grad()
        outs.append(out)

    h = emb.register_forward_hook(hook)
    try:
        loss = infonce(group_scores(task.scorer, groups, task.queries, task.texts), task.scorer.scale)
        loss.backward()
    finally:
        h.remove()
    grads = [o.grad.norm() ** 2 for o in outs if o.grad is not None]
    task.scorer.module.zero_grad()
    return float(sum(grads) ** 0.5) / max(1, len(groups))


@register
class FIT(Method):
    """Continual unlearning: filtering, importance-aware loss choice, targeted layers; keeps state."""

    name = "fit"

    def __init__(self, fcfg: FITConfig | None = None, state: FITState | None = None) -> None:
        self.fcfg = fcfg or FITConfig()
        self.state = state or FITState()

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        cfg = cfg or UnlearnConfig()
        t0 = time.perf_counter()
        task.scorer.module.eval()
        kept, dropped = self._filter(task)
        record: dict[str, Any] = {"groups": len(task.sets.forget), "filtered_out": dropped}
        losses: list[float] = []
        if kept:
            sub = _with_forget(task, kept)
            ratio = input_gradient_norm(sub, kept) / max(1e-12, input_gradient_norm(sub, list(sub.sets.retain)[:8]))
            choice = "npo+retain" if ratio >= self.fcfg.hi else ("npo" if ratio >= self.fcfg.lo else "random_label")
            scores = layer_attribution(sub, kept)
            top = sorted(np.argsort(scores)[::-1][: self.fcfg.top_layers].tolist()) if scores else []
            frozen = _freeze_except(sub, top)
            try:
                losses = self._update(sub, cfg, choice)
            finally:
                for p in frozen:
                    p.requires_grad_(True)
            record.update(importance_ratio=ratio, loss=choice, layers=top)
            self.state.memory.extend(self._embed([e.positive for e in kept], task))
        self.state.history.append(record)
        return UnlearnResult(task.scorer, self.name, time.perf_counter() - t0, False, losses, record)

    def _embed(self, docs: list[str], task: UnlearnTask) -> list[np.ndarray]:
        if not hasattr(task.scorer, "embed_docs"):
            return []
        vecs = task.scorer.embed_docs([task.texts[d] for d in docs])
        return list(vecs / np.maximum(1e-12, np.linalg.norm(vecs, axis=1, keepdims=True)))

    def _filter(self, task: UnlearnTask) -> tuple[list, int]:
        groups = list(task.sets.forget)
        if not self.state.memory or not hasattr(task.scorer, "embed_docs"):
            return groups, 0
        mem = np.vstack(self.state.memory)
        vecs = self._embed([e.positive for e in groups], task)
        base = _forget_loss(task, groups)
        kept = []
        for i, (e, v) in enumerate(zip(groups, vecs)):
            if float((mem @ v).max()) < self.fcfg.tau:
                kept.append(e)
                continue
            rest = groups[:i] + groups[i + 1 :]
            delta = abs(base - (_forget_loss(task, rest) if rest else 0.0))
            if delta > self.fcfg.epsilon:
                kept.append(e)
        return kept, len(groups) - len(kept)

    def _update(self, task: UnlearnTask, cfg: UnlearnConfig, choice: str) -> list[float]:
        if choice.startswith("npo"):
            npo = NPO()
            npo.prepare(task, cfg)
            alpha = cfg.alpha if choice == "npo+retain" else 0.0
            step_cfg = UnlearnConfig(**{**cfg.__dict__, "alpha": alpha})
            return optimise(task, step_cfg, npo.loss)
        rng = random.Random(cfg.seed)

        def random_label(t: UnlearnTask, forget: list, retain: list, c: UnlearnConfig) -> Any:
            import torch

            s = group_scores(t.scorer, forget, t.queries, t.texts)
            target = torch.tensor([rng.randrange(1, s.shape[1]) for _ in range(s.shape[0])])
            return torch.nn.functional.cross_entropy(s * t.scorer.scale, target) + c.alpha * retain_loss(t, retain)

        return optimise(task, cfg, random_label)


def _with_forget(task: UnlearnTask, groups: list) -> UnlearnTask:
    import copy

    sub = copy.copy(task)
    sub.sets = copy.copy(task.sets)
    sub.sets.forget = groups
    return sub


def _freeze_except(task: UnlearnTask, layers: list[int]) -> list[Any]:
    """Freeze every parameter but those of the chosen transformer layers; returns what was frozen."""
    _, stack = layer_stack(task.scorer.module)
    if stack is None or not layers:
        return []
    keep = {id(p) for i in layers for p in stack[i].parameters()}
    frozen = [p for p in task.scorer.module.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    return frozen
