"""Choose a collection's reranker on tuning queries, never on test ones (``lethe choose-reranker``).

Each candidate is a :class:`RerankerSpec` (a registry model, its mode and the passage view an LLM reads, or
``none``: the first stage as it is). :func:`choose_reranker` reranks the first stage's top ``depth`` of a
fixed-seed sample of tuning queries with every candidate, keeps the best mean nDCG@10 (``none`` competes:
no reranker is chosen unless one beats the first stage on these queries) and records the choice in the
workspace, where ``lethe eval --rerank auto`` and :meth:`Workspace.reranker` ``("auto")`` read it.

The tuning queries are those of ``split`` (default: the collection's ``dev`` split, else ``train``) that no
candidate — nor any model it was grown from — was trained on (their registry lineage), so a trained
reranker is not judged on its own training queries. The test split is refused: choosing on it is what the
command exists to avoid.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lethe.errors import LetheError

if TYPE_CHECKING:
    from lethe.data import Dataset
    from lethe.pipelines.workspace import Workspace

#: the workspace metadata key of the recorded choice
META_KEY = "reranker"
#: the spec of "no reranker"
NONE = "none"
#: splits that may never tune a default (reporting on them afterwards would be optimistic)
REFUSED_SPLITS = ("test",)


@dataclass(frozen=True)
class RerankerSpec:
    """A reranker to try: registry ``model`` (None: no reranker), LLM ``mode`` (default ``full``) and
    ``passage_view`` (default: the model's own).

    Written ``NAME[@VERSION][:MODE[:VIEW]]`` (``smollm2:qlm:query``, ``cross-encoder``) or ``none``.
    """

    model: str | None
    mode: str | None = None
    passage_view: str | None = None

    @classmethod
    def parse(cls, text: str) -> RerankerSpec:
        """``NAME[@VERSION][:MODE[:VIEW]]`` or ``none``; a clear error for anything else."""
        from lethe.pipelines.rerank import LLM_MODES
        from lethe.ranking.prompts import PASSAGE_VIEWS

        parts = [p.strip() for p in text.strip().split(":")]
        if parts == [NONE]:
            return cls(None)
        if not parts[0] or len(parts) > 3:
            raise LetheError(f"reranker {text!r}: write NAME[@VERSION][:MODE[:VIEW]] or {NONE}")
        if len(parts) > 1 and parts[1] not in LLM_MODES:
            raise LetheError(f"reranker {text!r}: mode {parts[1]!r} is not one of {', '.join(LLM_MODES)}")
        if len(parts) > 2 and parts[2] not in PASSAGE_VIEWS:
            raise LetheError(f"reranker {text!r}: view {parts[2]!r} is not one of {', '.join(PASSAGE_VIEWS)}")
        return cls(parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None)

    def __str__(self) -> str:
        if self.model is None:
            return NONE
        return ":".join([self.model] + [p for p in (self.mode, self.passage_view) if p])

    def load(self, ws: Workspace, **options: Any) -> Any:
        """The reranker (None for ``none``); ``options`` as :func:`lethe.pipelines.rerank.load_reranker`."""
        from lethe.pipelines.rerank import load_reranker

        if self.model is None:
            return None
        return load_reranker(ws, self.model, self.mode or "full", passage_view=self.passage_view, **options)


@dataclass
class RerankChoice:
    """What :func:`choose_reranker` measured and chose (recorded in the workspace as a dict)."""

    chosen: str
    split: str
    queries: int
    depth: int
    retriever: str
    first_stage: float
    ndcg10: dict[str, float] = field(default_factory=dict)
    delta_ci: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RerankChoice:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def trained_queries(ws: Workspace, model: str) -> set[str]:
    """The query ids a registry model, or any model it was grown from, was trained on (its lineage)."""
    seen: set[str] = set()
    todo, done = [ws.registry.get(model)], set()
    while todo:
        ref = todo.pop()
        if ref.id in done:
            continue
        done.add(ref.id)
        seen.update(ws.registry.lineage_of(ref).query_ids)
        todo.extend(parent for _, parent in ws.registry.parents_of(ref))
    return seen


def default_split(ds: Dataset) -> str:
    """``dev`` where the collection has it, else ``train``; an error naming the splits when neither."""
    for split in ("dev", "train"):
        if split in ds.qrels:
            return split
    raise LetheError(f"{ds.name} has no dev or train qrels (it has {sorted(ds.qrels)}): a reranker cannot be "
                     "chosen without tuning queries; pass --split with a split that is not the test one")


def tuning_queries(ws: Workspace, ds: Dataset, specs: Iterable[RerankerSpec], split: str, n: int,
                   seed: int = 7) -> list[str]:
    """A fixed-seed sample of ``n`` judged ``split`` queries (0: all) that no candidate trained on and that were
    not forgotten (a forgotten query's text stays in the dataset files, never in what lethe reads)."""
    if split in REFUSED_SPLITS:
        raise LetheError(f"choosing a reranker on the {split} split would make every later {split} figure "
                         "optimistic: use dev or train queries (the default)")
    trained: set[str] = set()
    for spec in specs:
        if spec.model is not None:
            trained |= trained_queries(ws, spec.model)
    gone = ws.ledger.forgotten_hashes("query")
    pool = sorted(q for q, rel in ds.split_qrels(split).items()
                  if q in ds.queries and q not in trained and any(v > 0 for v in rel.values())
                  and not (gone and ws.ledger.hash_id(q, "query") in gone))
    if len(pool) < 2:
        raise LetheError(f"{ds.name}/{split} has {len(pool)} judged queries no candidate trained on: too few "
                         "to choose a reranker")
    return sorted(random.Random(seed).sample(pool, n)) if 0 < n < len(pool) else pool


def choose_reranker(ws: Workspace, ds: Dataset, specs: Sequence[RerankerSpec], split: str | None = None,
                    queries: int = 100, depth: int = 20, retriever: str = "bm25",
                    on_query: Callable[[str, int, int], None] | None = None) -> RerankChoice:
    """Rerank the ``retriever``'s top ``depth`` of the tuning queries with each of ``specs`` and record the
    best (by mean nDCG@10; ``none`` is always a candidate) as the workspace's reranker.

    ``on_query(candidate, done, total)`` is called after each query a candidate reranked (progress). Returns
    every figure: nDCG@10 per candidate and the paired-bootstrap 95% interval of its difference to the first
    stage.
    """
    from lethe.pipelines.evaluate import delta_ci, evaluate
    from lethe.ranking.base import rerank_run

    if not specs:
        raise LetheError("give at least one reranker to choose from")
    split = split or default_split(ds)
    qids = tuning_queries(ws, ds, specs, split, queries)
    qrels = {q: ds.split_qrels(split)[q] for q in qids}
    texts = {q: ds.queries[q].text for q in qids}
    hits = ws.load_index(retriever).search([texts[q] for q in qids], depth)
    first = {q: {h.doc_id: h.score for h in hs} for q, hs in zip(qids, hits)}
    base_agg, base_pq = evaluate(first, qrels, ["nDCG@10"])
    choice = RerankChoice(NONE, split, len(qids), depth, retriever, round(base_agg["nDCG@10"], 4))
    best = base_agg["nDCG@10"]
    for spec in specs:
        if spec.model is None:
            continue
        tick = _ticker(on_query, str(spec), len(qids)) if on_query else None
        run, _ = rerank_run(spec.load(ws), first, texts, depth, on_query=tick)
        agg, per_query = evaluate(run, qrels, ["nDCG@10"])
        choice.ndcg10[str(spec)] = round(agg["nDCG@10"], 4)
        choice.delta_ci[str(spec)] = [round(x, 4) for x in delta_ci(per_query, base_pq, "nDCG@10")]
        if agg["nDCG@10"] > best:
            best, choice.chosen = agg["nDCG@10"], str(spec)
    ws.set_meta(**{META_KEY: choice.to_dict()})
    return choice


def _ticker(on_query: Callable[[str, int, int], None], name: str, total: int) -> Callable[[], None]:
    """A no-argument callback that reports ``name``'s next query as done."""
    done = iter(range(1, total + 1))
    return lambda: on_query(name, next(done), total)


def chosen_reranker(ws: Workspace) -> RerankerSpec:
    """The reranker :func:`choose_reranker` recorded for this workspace (``none`` is a valid choice); an
    error telling how to make one when there is none."""
    recorded = ws.meta().get(META_KEY)
    if not recorded:
        raise LetheError("no reranker has been chosen for this workspace: run `lethe choose-reranker --data ...` "
                         "(it measures the candidates on dev queries) or name the reranker")
    return RerankerSpec.parse(RerankChoice.from_dict(recorded).chosen)
