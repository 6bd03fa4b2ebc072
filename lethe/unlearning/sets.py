"""Forget and retain sets of one model for one request (METHODS card 0).

Training items are :class:`~lethe.training.pools.MinedExample` groups ``(query, positive,
negatives, teacher scores)`` — what the students and the teacher were trained on. For forgotten
documents ``D*`` (and forgotten queries, e.g. an owner's own questions):

* **forget**: items whose positive is in ``D*`` or whose query is forgotten;
* **touched**: items that had a forgotten document only as a *negative*: the document is cut out
  (the group is padded with its remaining negatives) — their rankings must stay right without it;
* **retain**: a stratified sample of the rest: every touched item, then items about the forgotten
  documents' neighbours (same topic, must *not* be forgotten), then generic items.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lethe.training.pools import MinedExample


@dataclass
class UnlearnSets:
    """What one model must forget and what it must keep."""

    forget: list[MinedExample]
    touched: list[MinedExample]
    retain: list[MinedExample]
    remaining: list[MinedExample]
    docs: set[str] = field(default_factory=set)
    queries: set[str] = field(default_factory=set)
    #: forgotten relevance judgements (query id, doc id): the pair's label goes, the document and query stay
    labels: set[tuple[str, str]] = field(default_factory=set)

    @property
    def forget_pairs(self) -> list[tuple[str, str]]:
        """The (query id, doc id) pairs the model was trained to score high and must not remember."""
        return [(e.query_id, e.positive) for e in self.forget]


def without_docs(example: MinedExample, docs: set[str]) -> MinedExample | None:
    """``example`` with the negatives in ``docs`` cut out and the group padded back to its size by
    repeating the remaining negatives; None when no negative is left."""
    keep = [(d, t) for d, t in zip(example.negatives, example.teacher[1:]) if d not in docs]
    if not keep:
        return None
    if len(keep) == len(example.negatives):
        return example
    padded = [keep[i % len(keep)] for i in range(len(example.negatives))]
    return MinedExample(example.query_id, example.positive, tuple(d for d, _ in padded),
                        (example.teacher[0], *(t for _, t in padded)))


def split_examples(examples: Sequence[MinedExample], docs: Iterable[str], queries: Iterable[str] = (),
                   retain_size: int | None = None, neighbours: Iterable[str] = (), seed: int = 0,
                   labels: Iterable[tuple[str, str]] = ()) -> UnlearnSets:
    """Forget / touched / retain sets of ``examples`` for forgotten ``docs`` and ``queries``, and forgotten
    relevance ``labels`` (query id, doc id): the group that trained that pair as relevant is forgotten, while
    the document and the query stay in every other group (label unlearning).

    ``remaining`` is every item a retrained model would see (forget items dropped, touched items
    edited) — the oracle's training set. ``retain_size`` defaults to ``max(32, 4 * |forget|)``.
    """
    docs, queries, labels = set(docs), set(queries), set(labels)
    forget, touched, rest, remaining = [], [], [], []
    for e in examples:
        if e.positive in docs or e.query_id in queries or (e.query_id, e.positive) in labels:
            forget.append(e)
            continue
        if docs.intersection(e.negatives):
            cut = without_docs(e, docs)
            if cut is not None:
                touched.append(cut)
                remaining.append(cut)
            continue
        rest.append(e)
        remaining.append(e)
    size = retain_size if retain_size is not None else max(32, 4 * len(forget))
    near = set(neighbours) - docs
    rng = random.Random(seed)
    about_near = [e for e in rest if e.positive in near]
    generic = [e for e in rest if e.positive not in near]
    rng.shuffle(about_near)
    rng.shuffle(generic)
    retain = (touched + about_near + generic)[: max(size, len(touched))]
    return UnlearnSets(forget, touched, retain, remaining, docs, queries, labels)
