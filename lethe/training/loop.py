"""The one training loop every lethe trainer runs (docs/training.md).

A trainer is a loss and its settings: it hands :func:`run_loop` a ``step_loss(step)`` that builds the
step's batch and returns its loss, and the loop does the rest the same way everywhere — seeds, AdamW,
the learning-rate schedule (linear warm-up, then constant or linear decay), gradient clipping, the time
budget, the step callback (progress bars), early stopping (a ``None`` loss) and train/eval modes.
:func:`epoch_batches` gives the seeded, epoch-by-epoch batches most trainers draw from.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
#: ``step_loss(step)``: the loss of step ``step`` (0-based) to back-propagate; a float when the trainer
#: already back-propagated it (gradient accumulation); None to stop (the trainer says it is done)
StepLoss = Callable[[int], Any]
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class LoopSettings:
    """How the loop optimises (every trainer's config maps onto this)."""

    steps: int
    lr: float
    weight_decay: float = 0.01
    warmup: float = 0.0           # fraction of the steps with a linear warm-up (1.0: warm up over every step)
    decay: bool = False           # linear decay to 0 after the warm-up (else constant)
    grouped_decay: bool = False   # no weight decay on biases and LayerNorm weights (1-d parameters)
    clip: float = 1.0             # gradient-norm clipping
    seed: int = 42
    max_seconds: float | None = None
    train_mode: bool = True       # module.train() while training (False: eval mode, dropout off)
    reseed: bool = True           # torch.manual_seed(seed) first (False: the trainer seeded before its own
                                  # random initialisation, e.g. of LoRA weights, and the draws continue)


@dataclass
class LoopResult:
    """What a run did: the loss of every step taken, the seconds, whether the trainer stopped it."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False

    @property
    def steps(self) -> int:
        return len(self.losses)


def optimizer(module: Any, s: LoopSettings) -> tuple[Any, Any]:
    """AdamW over the trainable parameters and its schedule."""
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    if s.grouped_decay:
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=s.lr)
    else:
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    n_warm = max(1, int(s.steps * s.warmup)) if s.warmup > 0 or s.decay else 0  # a decay starts from step 1

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return max(0.0, (s.steps - step) / max(1, s.steps - n_warm)) if s.decay else 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def run_loop(module: Any, step_loss: StepLoss, s: LoopSettings, on_step: Progress | None = None,
             after_step: Callable[[], None] | None = None) -> LoopResult:
    """Up to ``s.steps`` optimiser steps on ``step_loss``; the module is left in eval mode."""
    import torch

    if s.reseed:
        torch.manual_seed(s.seed)
    opt, sched = optimizer(module, s)
    params = [p for p in module.parameters() if p.requires_grad]
    result, t0 = LoopResult(), time.perf_counter()
    module.train(s.train_mode)
    for step in range(s.steps):
        loss = step_loss(step)
        if loss is None:
            result.stopped = True
            break
        if not isinstance(loss, float):
            loss.backward()
            loss = float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, s.clip)
        opt.step()
        sched.step()
        opt.zero_grad()
        result.losses.append(loss)
        if after_step:
            after_step()
        if on_step:
            on_step(step + 1, s.steps, loss)
        if s.max_seconds and time.perf_counter() - t0 > s.max_seconds:
            break
    module.eval()
    result.seconds = time.perf_counter() - t0
    return result


def epoch_batches(items: Sequence[T], batch_size: int, rng: random.Random,
                  order: Callable[[list[T], int], list[T]] | None = None) -> Iterator[list[T]]:
    """Batches of ``batch_size`` drawn epoch after epoch: each epoch the items shuffled by ``rng``, or in
    ``order(items, epoch)``; an epoch's leftovers start the next batch. Infinite (the loop counts steps)."""
    pending: list[T] = []
    epoch = 0
    while True:
        if len(pending) < batch_size:
            more = list(items)
            if order is not None:
                more = order(more, epoch)
            else:
                rng.shuffle(more)
            pending += more
            epoch += 1
        batch, pending = pending[:batch_size], pending[batch_size:]
        yield batch
