"""Small value objects shared by every layer of lethe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: qrels in the ir-measures / TREC shape: ``{query_id: {doc_id: relevance}}``
Qrels = dict[str, dict[str, int]]
#: a run in the ir-measures / TREC shape: ``{query_id: {doc_id: score}}``
Run = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Doc:
    """A document: id, title, text, the users who own it and free metadata."""

    id: str
    text: str
    title: str = ""
    owners: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def contents(self) -> str:
        """Title and text joined, the string every index sees (BEIR convention)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True)
class Query:
    """A query: id, text and free metadata (e.g. the user who asked it)."""

    id: str
    text: str
    owners: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Hit(NamedTuple):
    """One search result (a named tuple: cheap to build by the thousand)."""

    doc_id: str
    score: float


@dataclass(frozen=True)
class ForgetRequest:
    """What to forget: explicit doc ids and/or every document of some owners, and/or relevance judgements
    ``labels`` (query id, doc id): the pair must no longer be learned as relevant, while the document and
    the query stay."""

    doc_ids: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    reason: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        from lethe.errors import ForgetError

        if not self.doc_ids and not self.owners and not self.labels:
            raise ForgetError("a forget request needs at least one doc id, owner or label")
        bad = [pair for pair in self.labels if len(pair) != 2 or not all(pair)]
        if bad:
            raise ForgetError(f"a label is a (query id, doc id) pair; got {bad[0]!r}")
