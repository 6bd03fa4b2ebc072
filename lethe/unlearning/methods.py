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

import hashlib
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from lethe.embedding.pools import MinedExample
from lethe.errors import LetheError
from lethe.unlearning.scorers import Scorer, group_scores, pair_scores
from lethe.unlearning.sets import UnlearnSets

METHODS: dict[str, type[Method]] = {}
EXTRA_MODULES = ("lethe.unlearning.reglu", "lethe.unlearning.uld", "lethe.unlearning.fit")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to :data:`METHODS` under its ``name``."""
    METHODS[cls.name] = cls
    return cls


def method_config(name: str, cfg: UnlearnConfig | None = None) -> UnlearnConfig:
    """``cfg`` (default settings when None) with the rate scaled by the method's own ``lr_scale``: what
    ``lethe forget --unlearn NAME`` and ``benchmarks/unlearn.py`` both run."""
    from dataclasses import replace

    cfg = cfg or UnlearnConfig()
    return replace(cfg, lr=cfg.lr * type(get_method(name)).lr_scale)


def get_method(name: str) -> Method:
    """An instance of the registered method ``name``; raises listing the known ones."""
    import importlib

    for module in EXTRA_MODULES:  # methods that live in their own modules register on import
        importlib.import_module(module)
    if name not in METHODS:
        raise LetheError(f"unknown unlearning method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]()


@dataclass
class UnlearnConfig:
    """Settings shared by the approximate methods (defaults suit MiniLM-size models on CPU)."""

    steps: int = 3               # the settings benchmarks/unlearn.py measured (benchmarks/RESULTS.md)
    lr: float = 3e-5             # before the method's own ``lr_scale`` (:func:`method_config`)
    forget_batch: int = 8
    retain_batch: int = 8
    alpha: float = 1.0           # retain weight (grad_diff, npo)
    beta: float = 0.1            # npo
    pdu_tol: float = 0.1         # pdu: epsilon = (1 + tol) * L_retain(theta_0)
    pdu_lambda0: float = 1.0     # pdu: initial dual variable
    pdu_eta: float = 1.0         # pdu: dual step
    forget_weight: float = 1.0   # relabel: weight of the retargeted forget pairs
    stop_at_target: bool = True  # relabel: no step once a forget batch's positives are at their targets
    seed: int = 0
    max_seconds: float | None = None


@dataclass
class UnlearnTask:
    """One model to unlearn: ``scorer`` is changed in place; ``reference`` is the frozen original."""

    scorer: Scorer
    sets: UnlearnSets
    queries: Mapping[str, str]
    texts: Mapping[str, str]
    reference: Scorer | None = None
    unseen_target: float | None = None
    # per (query id, doc id) targets for relabel, e.g. from :func:`calibrated_targets`
    pair_targets: Mapping[tuple[str, str], float] | None = None
    retrain: Callable[[list[MinedExample]], Scorer] | None = None
    sharded: Any = None  # a ShardedModel trained on the same data (for ``sharded``)


@dataclass
class UnlearnResult:
    """What a method produced."""

    scorer: Scorer
    method: str
    seconds: float
    exact: bool = False
    losses: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: ``run(task, cfg)``; approximate methods implement ``loss``."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = False
    output_only: ClassVar[bool] = False
    warmup: ClassVar[bool] = False  # linear learning-rate warm-up over the steps
    #: the method's own multiplier of ``UnlearnConfig.lr`` (a rank-r adapter needs larger steps than full
    #: fine-tuning; relabel stops at its targets, so it can take larger ones): see :func:`method_config`
    lr_scale: ClassVar[float] = 1.0

    def run(self, task: UnlearnTask, cfg: UnlearnConfig | None = None) -> UnlearnResult:
        cfg = cfg or UnlearnConfig()
        if not task.sets.forget:
            raise LetheError(f"{self.name}: nothing to forget (no training group has the forgotten data)")
        t0 = time.perf_counter()
        self.prepare(task, cfg)
        losses = optimise(task, cfg, self.loss, self.after_step, warmup=self.warmup)
        return UnlearnResult(task.scorer, self.name, time.perf_counter() - t0, False, losses, self.info())

    def prepare(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        """Hook before the first step (e.g. measure the retain loss)."""

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        raise NotImplementedError

    def after_step(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        """Hook after each optimiser step (e.g. the dual update)."""

    def info(self) -> dict[str, Any]:
        return {}


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


def optimise(task: UnlearnTask, cfg: UnlearnConfig,
             loss_fn: Callable[[UnlearnTask, list[MinedExample], list[MinedExample], UnlearnConfig], Any],
             after_step: Callable[[UnlearnTask, UnlearnConfig], None] | None = None,
             warmup: bool = False) -> list[float]:
    """Up to ``cfg.steps`` AdamW steps on ``loss_fn(task, forget batch, retain batch, cfg)``; a loss of
    ``None`` ends the run (the method says it is done). ``warmup``: step ``i`` (from 1) uses
    ``lr * i / cfg.steps``."""
    import torch

    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    module = task.scorer.module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    forget, retain = _cycler(task.sets.forget, rng), _cycler(task.sets.retain, rng)
    losses: list[float] = []
    t0 = time.perf_counter()
    module.eval()  # dropout off: small corrective updates on exact (deterministic) scores; gradients still flow
    for step in range(cfg.steps):
        if warmup:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (step + 1) / cfg.steps
        fb = [next(forget) for _ in range(min(cfg.forget_batch, len(task.sets.forget)))]
        rb = [next(retain) for _ in range(min(cfg.retain_batch, len(task.sets.retain)))] if task.sets.retain else []
        loss = loss_fn(task, fb, rb, cfg)
        if loss is None:  # the method has reached its target: no further step
            break
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        if after_step:
            after_step(task, cfg)
        if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
            break
    return losses


def _cycler(items: Sequence[MinedExample], rng: random.Random):  # noqa: ANN202
    pool: list[MinedExample] = []
    while True:
        if not pool:
            pool = list(items)
            rng.shuffle(pool)
            if not pool:
                return
        yield pool.pop()


def _retain_loss(task: UnlearnTask, retain: list[MinedExample]) -> Any:
    import torch

    if not retain:
        return torch.zeros(())
    return infonce(group_scores(task.scorer, retain, task.queries, task.texts), task.scorer.scale)


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


def train_groups(scorer: Scorer, examples: Sequence[MinedExample], queries: Mapping[str, str],
                 texts: Mapping[str, str], epochs: float = 1.0, lr: float = 2e-5, batch_size: int = 16,
                 seed: int = 42, on_step: Callable[[int, int, float], None] | None = None,
                 stable_order: bool = False) -> list[float]:
    """The plain group recipe: InfoNCE over each (positive, negatives) group, AdamW, seeded order.

    Used for the originals, the retrained oracles and the shards of the unlearning benchmark, so all
    of them follow the same recipe and seeds. ``stable_order``: each epoch's order sorts the groups by
    a seeded hash of (epoch, query, positive) instead of shuffling the list, so removing a group leaves
    the others in the same relative order (a retrained SISA shard then differs from the old one by
    the deletion, not by a new draw of the order).
    """
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in scorer.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = max(1, math.ceil(len(examples) * epochs / batch_size))
    order: list[MinedExample] = []
    losses: list[float] = []
    scorer.module.train()
    epoch = 0
    for step in range(steps):
        if len(order) < batch_size:
            more = list(examples)
            if stable_order:
                more = epoch_order(more, seed, epoch)
            else:
                rng.shuffle(more)
            order += more
            epoch += 1
        batch, order = order[:batch_size], order[batch_size:]
        loss = infonce(group_scores(scorer, batch, queries, texts), scorer.scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step + 1, steps, losses[-1])
    scorer.module.eval()
    return losses


def epoch_order(examples: Sequence[MinedExample], seed: int, epoch: int) -> list[MinedExample]:
    """Groups sorted by a seeded hash of (epoch, query, positive): a deletion-stable shuffle (removing
    a group leaves the others in the same relative order; see ``train_groups(stable_order=True)``)."""
    def key(e: MinedExample) -> bytes:
        return hashlib.sha256(f"{seed}\t{epoch}\t{e.query_id}\t{e.positive}".encode()).digest()

    return sorted(examples, key=key)


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
        return -infonce(s_f, task.scorer.scale) + cfg.alpha * _retain_loss(task, retain)


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
        npo = -(2.0 / cfg.beta) * torch.nn.functional.logsigmoid(-cfg.beta * ratio).mean()
        return npo + cfg.alpha * _retain_loss(task, retain)


@register
class PDU(Method):
    """Constrained entropic unlearning: margin flattening s.t. retain loss <= (1 + tol) x its start value."""

    name = "pdu"

    def prepare(self, task: UnlearnTask, cfg: UnlearnConfig) -> None:
        import torch

        self.lam = cfg.pdu_lambda0
        with torch.no_grad():
            task.scorer.module.eval()
            base = float(_retain_loss(task, list(task.sets.retain)[:64]))
        self.epsilon = (1.0 + cfg.pdu_tol) * base
        self.last_retain = base
        self.lambdas: list[float] = []
        self.retain_losses: list[float] = []

    def loss(self, task: UnlearnTask, forget: list[MinedExample], retain: list[MinedExample],
             cfg: UnlearnConfig) -> Any:
        s_f = group_scores(task.scorer, forget, task.queries, task.texts)
        l_r = _retain_loss(task, retain)
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
