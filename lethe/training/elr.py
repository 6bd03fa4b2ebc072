"""Early-learning regularisation (ELR; Liu et al., NeurIPS 2020) for training on noisy relevance labels.

Early in training a model fits the clean majority of the labels before it memorises the wrong ones. ELR
keeps, per training example ``i``, a target ``t_i``: an exponential moving average of the model's own
(detached) predictions over the example's candidate group, and adds to the base loss

    ``lam * mean_i log(1 - <t_i, p_i>)``

where ``p_i = softmax(scale * S[i, :])`` over the group's candidates (column 0: the labelled positive).
Minimising it raises ``<t_i, p_i>``: the model is held to what it predicted early, so a mislabelled positive
is not memorised. Each time example ``i`` is in a batch, with ``p_i`` clamped to ``[1e-4, 1 - 1e-4]``,
``t_i <- beta * t_i + (1 - beta) * p_i / sum(p_i)`` (``p_i`` detached; ``t_i`` starts at zeros), and the
penalty then uses the updated ``t_i`` and the clamped, not detached ``p_i`` (as the official code:
``loss = ce + lam * ((1 - (t * p).sum(1)).log()).mean()``).

Fine-tuning a pretrained retriever for an epoch or two visits each example once or twice, too few for an EMA
that starts at zeros to hold an early prediction. ``ELRConfig(start="model")`` (our adaptation, not the
paper's) starts every ``t_i`` at the model's prediction *before* training (one no-grad pass over the groups,
:meth:`ELRTargets.prime`): the pretrained model's view of each group is the early learning the penalty holds
the model to, and the EMA then runs from there.

``ELRConfig(select=tau)`` (also ours; it needs ``start="model"``) uses the same targets to decide which labels to
learn from: a group whose target gives its labelled positive less than ``tau`` — the model, before training
and since, finds the label implausible among its candidates — contributes no label loss (its ELR term stays).
A random document labelled relevant gets almost no probability from a pretrained retriever, so this drops
most wrong labels before they are fitted; ``tau`` is tuned on dev queries like ``lam``.

The targets are per-example state keyed by (query id, positive id): they remember which pairs were trained
on, so :meth:`ELRTargets.forget` drops the entries of forgotten pairs, and nothing here writes them to disk
(they live as long as the training run that holds them).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lethe.training.losses import elr_penalty

if TYPE_CHECKING:
    from lethe.training.pools import MinedExample

#: ``p`` is clamped to ``[EPS, 1 - EPS]`` before the target update and the penalty (the official code's bounds)
EPS = 1e-4
#: where the targets start: the paper's zeros, or the untrained model's predictions (``ELRTargets.prime``)
STARTS = ("zeros", "model")


@dataclass(frozen=True)
class ELRConfig:
    """ELR's knobs: ``beta`` the targets' EMA momentum, ``lam`` the penalty's weight (tune it on dev),
    ``start`` where the targets start: ``zeros`` (the paper) or ``model`` (the untrained model's predictions),
    ``select``: learn no label whose target gives its positive less than this (0: every label; needs ``model``)."""

    beta: float = 0.7
    lam: float = 3.0
    start: str = "zeros"
    select: float = 0.0

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"ELR start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if not 0.0 <= self.select < 1.0:
            raise ValueError(f"ELR select must be in [0, 1), got {self.select}")
        if self.select and self.start != "model":
            raise ValueError("ELR select reads the targets before training: it needs start='model'")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"ELR beta must be in [0, 1), got {self.beta}")
        if self.lam < 0:
            raise ValueError(f"ELR lam must be >= 0, got {self.lam}")


def example_key(example: MinedExample) -> tuple[str, str]:
    """The key of a training group's targets: (query id, positive id)."""
    return (example.query_id, example.positive)


class ELRTargets:
    """The per-example targets ``t_i`` of one training run, keyed by (query id, positive id).

    In memory only: there is no save method, and :meth:`forget` / :meth:`forget_docs` drop the entries of
    forgotten pairs. A group keeps its size between visits (its targets are over its own candidates).
    """

    def __init__(self, config: ELRConfig | None = None) -> None:
        self.config = config or ELRConfig()
        self._targets: dict[Hashable, Any] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._targets

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._targets))

    def keys(self) -> list[Hashable]:
        """The keys that hold targets."""
        return list(self._targets)

    def target(self, key: Hashable) -> np.ndarray | None:
        """A copy of ``t`` for ``key`` (None: never seen, or forgotten)."""
        t = self._targets.get(key)
        return None if t is None else t.numpy().copy()

    def update_and_loss(self, keys: Sequence[Hashable], logits: Any) -> Any:
        """Update the targets of ``keys`` with this batch's predictions; return ``lam * mean log(1 - <t, p>)``.

        ``logits``: the scaled candidate scores, ``[B, K]`` (column 0 the positive; e.g. ``scale * S``) or a
        sequence of ``B`` 1-d tensors for groups of different sizes. The returned scalar is differentiable
        through ``logits``; add it to the base loss. A key that occurs twice in a batch is updated twice, in
        order.
        """
        import torch

        rows = list(logits.unbind(0)) if isinstance(logits, torch.Tensor) else list(logits)
        if len(rows) != len(keys):
            raise ValueError(f"ELR got {len(keys)} keys for {len(rows)} groups")
        if not rows:
            raise ValueError("ELR needs at least one group")
        terms = []
        for key, row in zip(keys, rows):
            p = torch.softmax(row.float(), dim=-1).clamp(EPS, 1.0 - EPS)
            t = self._update(key, p.detach())
            terms.append(elr_penalty(p.unsqueeze(0), t.to(p.device).unsqueeze(0)))
        return self.config.lam * torch.stack(terms).mean()

    def kept(self, keys: Sequence[Hashable]) -> list[bool]:
        """Which groups' labels to learn from (``config.select``): those without a target yet, or whose target
        gives the labelled positive (candidate 0) at least ``select``."""
        tau = self.config.select
        return [tau <= 0 or (t := self._targets.get(k)) is None or float(t[0]) >= tau for k in keys]

    def doubted(self) -> list[Hashable]:
        """The keys whose labels :meth:`kept` would skip now (empty without ``select``)."""
        return [k for k, keep in zip(self._targets, self.kept(list(self._targets))) if not keep]

    def prime(self, keys: Sequence[Hashable], logits: Any) -> None:
        """Start the targets of ``keys`` at these predictions (``t = p``, ``p`` the clamped softmax of each
        group's ``logits``, as :meth:`update_and_loss` takes them); no penalty, nothing to differentiate."""
        import torch

        rows = list(logits.unbind(0)) if isinstance(logits, torch.Tensor) else list(logits)
        if len(rows) != len(keys):
            raise ValueError(f"ELR got {len(keys)} keys for {len(rows)} groups")
        for key, row in zip(keys, rows):
            p = torch.softmax(row.detach().float(), dim=-1).clamp(EPS, 1.0 - EPS).cpu()
            self._targets[key] = p / p.sum()

    def _update(self, key: Hashable, p: Any) -> Any:
        """``t <- beta t + (1 - beta) p / sum(p)`` (``t`` from zeros); returns the new ``t``."""
        import torch

        p = p.cpu()
        old = self._targets.get(key)
        if old is None:
            old = torch.zeros_like(p)
        elif old.shape != p.shape:
            raise ValueError(f"ELR targets of {key!r} are over {old.shape[0]} candidates, the group has {p.shape[0]}")
        beta = self.config.beta
        new = beta * old + (1.0 - beta) * (p / p.sum())
        self._targets[key] = new
        return new

    def forget(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Drop the targets of the given (query id, positive id) pairs; returns how many were held."""
        return sum(self._targets.pop(tuple(k), None) is not None for k in pairs)

    def forget_docs(self, doc_ids: Iterable[str]) -> int:
        """Drop the targets of every group whose positive is one of ``doc_ids``; returns how many. A group
        that holds a document only as a negative is keyed by its own positive: drop it with :meth:`forget`
        (``example_key`` of each such group; the keys do not name the negatives)."""
        docs = set(doc_ids)
        return self.forget([k for k in self._targets if isinstance(k, tuple) and len(k) == 2 and k[1] in docs])

    def forget_queries(self, query_ids: Iterable[str]) -> int:
        """Drop the targets of every group of the given queries; returns how many."""
        qs = set(query_ids)
        return self.forget([k for k in self._targets if isinstance(k, tuple) and len(k) == 2 and k[0] in qs])

    def clear(self) -> None:
        """Drop every target (the end of a training run)."""
        self._targets.clear()


def as_targets(elr: ELRConfig | ELRTargets | None) -> ELRTargets | None:
    """Fresh targets for a config (they live as long as the run), the caller's own targets as they are
    (kept across calls, forgettable by the caller), or None (no ELR)."""
    if elr is None or isinstance(elr, ELRTargets):
        return elr
    return ELRTargets(elr)


def prime_targets(targets: ELRTargets | None, module: Any, groups: Sequence[Any], keys: Callable[[Any], Hashable],
                  logits: Callable[[Sequence[Any]], Any], batch_size: int = 16) -> None:
    """Before training: start the targets at the model's predictions when their config says
    ``start="model"`` (``logits`` of a batch of ``groups``, under no grad with ``module`` in eval mode;
    groups already held keep theirs). A no-op for ``None`` or the paper's zeros."""
    import torch

    if targets is None or targets.config.start != "model":
        return
    todo = [g for g in groups if keys(g) not in targets]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                targets.prime([keys(g) for g in batch], logits(batch))
    finally:
        module.train(was_training)
