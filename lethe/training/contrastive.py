"""The contrastive group recipe: InfoNCE over each (positive, negatives) group, no teacher
(``lethe train embedder --recipe contrastive``; the recipe of SISA shards and retrained oracles)."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lethe.training.elr import ELRConfig, ELRTargets, as_targets, example_key, prime_targets
from lethe.training.losses import infonce
from lethe.training.pools import MinedExample
from lethe.training.scorers import Scorer, group_scores


def train_groups(scorer: Scorer, examples: Sequence[MinedExample], queries: Mapping[str, str],
                 texts: Mapping[str, str], epochs: float = 1.0, lr: float = 2e-5, batch_size: int = 16,
                 seed: int = 42, on_step: Callable[[int, int, float], None] | None = None,
                 stable_order: bool = False, elr: ELRConfig | ELRTargets | None = None) -> list[float]:
    """The plain group recipe: InfoNCE over each (positive, negatives) group, AdamW, seeded order.

    Used for the originals, the retrained oracles and the shards of the unlearning benchmark, so all
    of them follow the same recipe and seeds. ``stable_order``: each epoch's order sorts the groups by
    a seeded hash of (epoch, query, positive) instead of shuffling the list, so removing a group leaves
    the others in the same relative order (a retrained SISA shard then differs from the old one by
    the deletion, not by a new draw of the order).

    ``elr``: add early-learning regularisation for noisy labels (``lethe.training.elr``), over each
    group's candidates with ``p = softmax(scale * S)``, keyed by (query id, positive id). An
    :class:`ELRConfig` keeps the targets for this call only; pass an :class:`ELRTargets` to keep (and
    forget from) them across calls. None (default): plain InfoNCE, unchanged.
    """
    from lethe.training.loop import LoopSettings, epoch_batches, run_loop

    rng = random.Random(seed)
    steps = max(1, math.ceil(len(examples) * epochs / batch_size))
    order = (lambda items, epoch: epoch_order(items, seed, epoch)) if stable_order else None
    batches = epoch_batches(examples, batch_size, rng, order)
    settings = LoopSettings(steps, lr, weight_decay=0.01, seed=seed)
    targets = as_targets(elr)
    prime_targets(targets, scorer.module, examples, example_key,
                  lambda b: group_scores(scorer, b, queries, texts) * scorer.scale, batch_size)
    if targets is None:
        return run_loop(scorer.module, lambda _: infonce(group_scores(scorer, next(batches), queries, texts),
                                                         scorer.scale), settings, on_step).losses
    return run_loop(scorer.module, lambda _: elr_step(scorer, next(batches), queries, texts, targets),
                    settings, on_step).losses


def elr_step(scorer: Scorer, batch: Sequence[MinedExample], queries: Mapping[str, str], texts: Mapping[str, str],
             targets: ELRTargets) -> Any:
    """InfoNCE of one batch (over the groups whose labels ELR keeps) plus ELR's ``lam * mean log(1 - <t, p>)``
    (the targets updated after the selection)."""
    s = group_scores(scorer, batch, queries, texts)
    keys = [example_key(e) for e in batch]
    keep = targets.kept(keys)
    label = infonce(s[keep], scorer.scale) if any(keep) else (s * 0.0).sum()
    return label + targets.update_and_loss(keys, s * scorer.scale)


def epoch_order(examples: Sequence[MinedExample], seed: int, epoch: int) -> list[MinedExample]:
    """Groups sorted by a seeded hash of (epoch, query, positive): a deletion-stable shuffle (removing
    a group leaves the others in the same relative order; see ``train_groups(stable_order=True)``)."""
    def key(e: MinedExample) -> bytes:
        return hashlib.sha256(f"{seed}\t{epoch}\t{e.query_id}\t{e.positive}".encode()).digest()

    return sorted(examples, key=key)
