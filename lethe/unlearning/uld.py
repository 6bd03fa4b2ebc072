"""ULD: unlearning from the score difference with an assistant model (METHODS card 6).

The target model is not touched. An *assistant* — a copy of the target's embeddings and first ``K``
layers with LoRA on its attention — is trained with the reversed objectives: **remember** the forget
groups (InfoNCE toward the forgotten positive) and be **ignorant** on retain groups (margin
flattening: every candidate scored alike, the analogue of a uniform next-token distribution). Served
score: ``s(q, d) = s_target(q, d) - alpha * s_assistant(q, d)``. For a bi-encoder this stays
ANN-compatible: index ``[v_t; v_a]`` and search with ``[u_t; -alpha u_a]``.

ULD is output-level suppression: the target's weights still hold the data. Its figures are reported,
but :func:`~lethe.unlearning.verify.verdict` never calls it ``unlearned`` (``suppressed`` at best).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lethe.errors import LetheError
from lethe.training.losses import infonce, margin_flat
from lethe.training.scorers import Scorer, group_scores
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnResult, UnlearnTask, optimise
from lethe.unlearning.registry import register


@dataclass
class ULDConfig:
    """ULD's own settings."""

    layers: int = 2          # K: transformer layers kept in the assistant
    alpha: float = 0.75      # served score: target - alpha * assistant
    retain_weight: float = 5.0
    lora_r: int = 8
    lora_alpha: int = 16


@dataclass
class ULDScorer:
    """``s_target - alpha * s_assistant``; ``target`` is frozen, ``assistant`` is small."""

    target: Scorer
    assistant: Scorer
    alpha: float = 0.75

    @property
    def scale(self) -> float:
        return self.target.scale

    @property
    def module(self) -> Any:
        import torch

        return torch.nn.ModuleList([self.target.module, self.assistant.module])

    def scores(self, queries: Any, cands: Any) -> Any:
        return self.target.scores(queries, cands) - self.alpha * self.assistant.scores(queries, cands)

    def embed_docs(self, texts: Any, batch_size: int = 32) -> np.ndarray:
        """Document vectors ``[v_t; v_a]`` (queries are encoded as ``[u_t; -alpha u_a]``)."""
        return np.hstack([self.target.embed_docs(texts, batch_size), self.assistant.embed_docs(texts, batch_size)])

    def copy(self) -> ULDScorer:
        return ULDScorer(self.target.copy(), self.assistant.copy(), self.alpha)


def truncated_copy(scorer: Scorer, layers: int) -> Scorer:
    """A deep copy of ``scorer`` keeping only its first ``layers`` transformer layers."""
    import torch

    out = scorer.copy()
    for _, mod in out.module.named_modules():
        for attr in ("layer", "layers"):
            stack = getattr(mod, attr, None)
            if isinstance(stack, torch.nn.ModuleList) and len(stack) > layers:
                setattr(mod, attr, torch.nn.ModuleList(list(stack)[:layers]))
                cfg = getattr(mod, "config", None)
                if cfg is not None and hasattr(cfg, "num_hidden_layers"):
                    cfg.num_hidden_layers = layers
                return out
    raise LetheError(f"no stack of more than {layers} transformer layers to truncate")


def _add_lora(scorer: Scorer, r: int, alpha: int) -> None:
    from peft import LoraConfig, get_peft_model

    from lethe.unlearning.sharded import lora_targets, model_slot

    holder, attr = model_slot(scorer)
    inner = getattr(holder, attr)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(inner))
    setattr(holder, attr, get_peft_model(inner, cfg))


@register
class ULD(Method):
    """Assistant trained with reversed objectives; served score = target - alpha * assistant."""

    name = "uld"
    lr_scale = 10.0
    output_only = True

    def __init__(self, ucfg: ULDConfig | None = None) -> None:
        self.ucfg = ucfg or ULDConfig()

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        cfg = cfg or UnlearnConfig()
        if not task.sets.forget:
            raise LetheError("uld: nothing to forget (no training group has the forgotten data)")
        t0 = time.perf_counter()
        target = task.scorer
        for p in target.module.parameters():
            p.requires_grad_(False)
        assistant = truncated_copy(target, self.ucfg.layers)
        _add_lora(assistant, self.ucfg.lora_r, self.ucfg.lora_alpha)
        sub = copy.copy(task)
        sub.scorer = assistant
        losses = optimise(sub, cfg, self.loss)
        served = ULDScorer(target, assistant, self.ucfg.alpha)
        return UnlearnResult(served, self.name, time.perf_counter() - t0, False, losses,
                             {"assistant_layers": self.ucfg.layers, "alpha": self.ucfg.alpha,
                              "output_only": True})

    def loss(self, task: UnlearnTask, forget: list, retain: list, cfg: UnlearnConfig) -> Any:
        remember = infonce(group_scores(task.scorer, forget, task.queries, task.texts), task.scorer.scale)
        if not retain:
            return remember
        ignorant = margin_flat(group_scores(task.scorer, retain, task.queries, task.texts))
        return remember + self.ucfg.retain_weight * ignorant
