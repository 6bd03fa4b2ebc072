"""Weight-unlearning methods for bi-encoders and cross-encoders, one class each, in a registry.

All methods read the same :class:`UnlearnTask` (the model to change, the frozen original as
reference, the forget / retain sets) and return an :class:`UnlearnResult`. Losses are the
contrastive / ranking analogues of the LLM-unlearning losses (METHODS card 0, B, 1, 4) on the
candidate-score matrix ``S`` (column 0 = the group's positive):

* ``retrain`` — the oracle: the recipe re-run on the data without the forgotten items (exact);
* ``grad_ascent`` — maximise the forget groups' InfoNCE (``+log P(d*|q)`` minimised);
* ``grad_diff`` — gradient ascent on forget + InfoNCE on retain;
* ``npo`` — ``-(2/beta) log sigmoid(-beta (log P(d*|q) - log P_ref(d*|q)))`` + retain InfoNCE;
* ``pdu`` — margin flattening ``(max_k S - mean_k S)^2`` on forget groups subject to
  ``L_retain <= (1 + tol) L_retain(theta_0)``, primal descent / dual ascent on lambda (card 4);
* ``relabel`` — DSE retarget-and-redistill (card 1): forget pairs' targets replaced by what a model
  that never saw them would score, squared error, while the retain groups are distilled to the
  original's scores. The target is per pair when the pre-training model is at hand
  (:func:`calibrated_targets`: its score plus the gain training gave pairs nobody trained on), else one
  level for every pair, ``m_unseen`` (the original's score on relevant documents it never saw).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lethe.errors import LetheError
from lethe.training.losses import infonce, log_p_target, margin_flat, npo
from lethe.training.pools import MinedExample
from lethe.training.scorers import Scorer, group_scores, pair_scores
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnResult, UnlearnTask, retain_loss
from lethe.unlearning.registry import register


@register
class Retrain(Method):
    """The oracle: re-run the training recipe on the data a model would have without the forgotten items."""

    name = "retrain"
    exact = True

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        if task.retrain is None:
            raise LetheError("retrain needs the model's training recipe (task.retrain)")
        t0 = time.perf_counter()
        scorer = task.retrain(list(task.sets.remaining))
        return UnlearnResult(scorer, self.name, time.perf_counter() - t0, True,
                             info={"examples": len(task.sets.remaining)})


@register
class Sharded(Method):
    """SISA: retrain only the shards whose data held the forgotten items, recombine (exact)."""

    name = "sharded"
    exact = True

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        if task.sharded is None:
            raise LetheError("sharded needs the model trained as shards (task.sharded, a ShardedModel)")
        t0 = time.perf_counter()
        hit, _ = task.sharded.forget(task.sets.docs, task.sets.queries)
        scorer = task.sharded.combined()
        exact = task.sharded.proves_forgotten(task.sets.docs, task.sets.queries)
        return UnlearnResult(scorer, self.name, time.perf_counter() - t0, exact,
                             info={"shards_retrained": hit, "shards": task.sharded.k})


@register
class GradAscent(Method):
    """Gradient ascent on the forget groups' InfoNCE."""

    name = "grad_ascent"

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        return -infonce(group_scores(task.scorer, forget, task.queries, task.texts), task.scorer.scale)


@register
class GradDiff(Method):
    """Gradient ascent on forget, descent on retain."""

    name = "grad_diff"

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        s_f = group_scores(task.scorer, forget, task.queries, task.texts)
        return -infonce(s_f, task.scorer.scale) + cfg.alpha * retain_loss(task, retain)


@register
class NPO(Method):
    """Negative preference optimisation against the frozen original, plus retain InfoNCE."""

    name = "npo"

    def prepare(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        if task.reference is None:
            raise LetheError("npo needs the original model as reference (task.reference)")
        task.reference.module.eval()

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        import torch

        s_f = group_scores(task.scorer, forget, task.queries, task.texts)
        with torch.no_grad():
            s_ref = group_scores(task.reference, forget, task.queries, task.texts)
        ratio = log_p_target(s_f, task.scorer.scale) - log_p_target(s_ref, task.scorer.scale)
        return npo(ratio, cfg.beta) + cfg.alpha * retain_loss(task, retain)


@register
class PDU(Method):
    """Constrained entropic unlearning: margin flattening s.t. retain loss <= (1 + tol) x its start value."""

    name = "pdu"

    def prepare(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        import torch

        self.lam = cfg.pdu_lambda0
        with torch.no_grad():
            task.scorer.module.eval()
            base = float(retain_loss(task, list(task.sets.retain)[:64]))
        self.epsilon = (1.0 + cfg.pdu_tol) * base
        self.last_retain = base
        self.lambdas: list[float] = []
        self.retain_losses: list[float] = []

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        s_f = group_scores(task.scorer, forget, task.queries, task.texts)
        l_r = retain_loss(task, retain)
        self.last_retain = float(l_r.detach())
        return margin_flat(s_f) + self.lam * (l_r - self.epsilon)

    def after_step(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        self.lam = max(0.0, self.lam + cfg.pdu_eta * (self.last_retain - self.epsilon))
        self.lambdas.append(self.lam)
        self.retain_losses.append(self.last_retain)

    def info(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "lambda_final": self.lam, "lambdas": self.lambdas,
                "retain_losses": self.retain_losses}


@register
class Relabel(Method):
    """DSE retarget-and-redistill: forget pairs pulled to their targets (per pair, or ``m_unseen``), retain
    groups to the original's scores. With ``cfg.stop_at_target`` it takes no step once a forget batch's
    positives score, on average, at or below their targets. Its rate warms up over the steps: Adam's first
    step moves every weight by about the learning rate and can jump far past the targets."""

    name = "relabel"
    warmup = True
    lr_scale = 3.0

    def prepare(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        if task.reference is None:
            raise LetheError("relabel needs the original model (reference)")
        if task.pair_targets is not None:
            missing = [(e.query_id, e.positive) for e in task.sets.forget
                       if (e.query_id, e.positive) not in task.pair_targets]
            if missing:
                raise LetheError(f"relabel: no target for the forget pair {missing[0]} in pair_targets")
        elif task.unseen_target is None or math.isnan(task.unseen_target):
            raise LetheError("relabel needs targets: pair_targets, or m_unseen (unseen_target)")
        task.reference.module.eval()
        self.gaps: list[float] = []
        self.stopped = False

    def info(self) -> dict[str, Any]:
        """Mean (score - target) of each step's forget positives before the step; whether it stopped there."""
        return {"target_gaps": self.gaps, "stopped_at_target": self.stopped}

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        import torch

        s_f = group_scores(task.scorer, forget, task.queries, task.texts)
        with torch.no_grad():
            ref_f = group_scores(task.reference, forget, task.queries, task.texts)
            target_f = ref_f.clone()
            if task.pair_targets is not None:
                target_f[:, 0] = torch.tensor([task.pair_targets[(e.query_id, e.positive)] for e in forget],
                                              dtype=target_f.dtype)
            else:
                target_f[:, 0] = task.unseen_target
            gap = float((s_f[:, 0] - target_f[:, 0]).mean())
        self.gaps.append(round(gap, 5))
        if cfg.stop_at_target and gap <= 0:  # the batch's positives are (on average) at their targets
            self.stopped = True
            return None
        loss = cfg.forget_weight * torch.nn.functional.mse_loss(s_f, target_f)
        if retain:
            s_r = group_scores(task.scorer, retain, task.queries, task.texts)
            with torch.no_grad():
                ref_r = group_scores(task.reference, retain, task.queries, task.texts)
            loss = loss + torch.nn.functional.mse_loss(s_r, ref_r)
        return loss


def calibrated_targets(base: Scorer, original: Scorer, pairs: Sequence[tuple[str, str]],
                       unseen: Sequence[tuple[str, str]], queries: Mapping[str, str],
                       texts: Mapping[str, str]) -> tuple[dict[tuple[str, str], float], float]:
    """What a model that never trained on ``pairs`` would score them: ``s_base(q, d) + gain``.

    ``base`` is the model training started from (the registry's ``init`` parent); ``gain`` is the mean
    of ``s_original - s_base`` over ``unseen`` pairs, of the same kind, that no training saw (what
    training gave pairs it did not contain: generalisation, not memory). Returns the targets and the gain.

    Why per pair: a retrained model does not score forgotten pairs like never-seen ones on average;
    pairs that were easy before training stay easy (on SciFact the oracle scores forgotten pairs above
    never-seen test pairs, MIA 0.68). The base model knows which pairs are easy, and it never saw any.
    """
    if not unseen:
        raise LetheError("calibrated_targets needs pairs no training saw, to measure the gain of training")
    gain = float(np.mean(pair_scores(original, unseen, queries, texts) - pair_scores(base, unseen, queries, texts)))
    before = pair_scores(base, pairs, queries, texts)
    return {p: float(v) + gain for p, v in zip(pairs, before)}, gain
