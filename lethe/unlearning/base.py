"""What every weight-unlearning method shares: its task, settings, result, base class and loop.

A method is a loss (``Method.loss``) run by :func:`optimise` through the one training loop
(``lethe.training.loop``), or its own ``run`` (``retrain``, ``sharded``, ``uld``, ``fit``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lethe.errors import LetheError
from lethe.training.losses import infonce
from lethe.training.pools import MinedExample
from lethe.training.scorers import Scorer, group_scores
from lethe.unlearning.sets import UnlearnSets


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
    ofmu_inner: int = 1          # ofmu: inner ascent steps per outer iteration (``steps`` = outer iterations)
    ofmu_rho0: float = 1e-3      # ofmu: initial weight of the stationarity penalty
    ofmu_gamma: float = 1.5      # ofmu: its growth per outer iteration
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


def optimise(task: UnlearnTask, cfg: UnlearnConfig,
             loss_fn: Callable[[UnlearnTask, list[MinedExample], list[MinedExample], UnlearnConfig], Any],
             after_step: Callable[[UnlearnTask, UnlearnConfig], None] | None = None,
             warmup: bool = False) -> list[float]:
    """Up to ``cfg.steps`` AdamW steps on ``loss_fn(task, forget batch, retain batch, cfg)``; a loss of
    ``None`` ends the run (the method says it is done). ``warmup``: step ``i`` (from 1) uses
    ``lr * i / cfg.steps``."""
    from lethe.training.loop import LoopSettings, run_loop

    rng = random.Random(cfg.seed)
    forget, retain = cycler(task.sets.forget, rng), cycler(task.sets.retain, rng)

    def step_loss(_: int) -> Any:
        fb = [next(forget) for _ in range(min(cfg.forget_batch, len(task.sets.forget)))]
        rb = [next(retain) for _ in range(min(cfg.retain_batch, len(task.sets.retain)))] if task.sets.retain else []
        return loss_fn(task, fb, rb, cfg)  # None: the method has reached its target, no further step

    # dropout off (eval mode): small corrective updates on exact (deterministic) scores; gradients still flow
    settings = LoopSettings(cfg.steps, cfg.lr, weight_decay=0.0, warmup=1.0 if warmup else 0.0, seed=cfg.seed,
                            max_seconds=cfg.max_seconds, train_mode=False)
    return run_loop(task.scorer.module, step_loss, settings,
                    after_step=(lambda: after_step(task, cfg)) if after_step else None).losses


def cycler(items: Sequence[MinedExample], rng: random.Random):  # noqa: ANN202
    pool: list[MinedExample] = []
    while True:
        if not pool:
            pool = list(items)
            rng.shuffle(pool)
            if not pool:
                return
        yield pool.pop()


def retain_loss(task: UnlearnTask, retain: list[MinedExample]) -> Any:
    import torch

    if not retain:
        return torch.zeros(())
    return infonce(group_scores(task.scorer, retain, task.queries, task.texts), task.scorer.scale)
