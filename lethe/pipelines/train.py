"""Training pipelines: teacher cross-encoder, teacher-score cache, DSE / LG-ANNA students — with lineage.

Every model trained here is registered with the exact data it saw: the training query ids, every
document id that entered a training example or a candidate pool, the owners of those documents and
queries, its teacher and the teacher-score cache (parent edges), so that
``registry.affected_by([doc])`` finds the teacher, the cache and every student trained through them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe.data import Dataset
from lethe.embedding.pools import MinedExample, TeacherScores, build_pools, mine
from lethe.embedding.train import EmbedTrainConfig, TrainResult, query_prompt, train_bi_encoder
from lethe.errors import LetheError
from lethe.pipelines.workspace import DEFAULT_ENCODER, Workspace
from lethe.ranking.cross_encoder import CETrainConfig, CrossEncoderReranker, Group, train_cross_encoder
from lethe.registry import ArtifactRef, Lineage, ModelSpec

Progress = Callable[[int, int, float], None]


@dataclass
class TrainingData:
    """Queries, qrels, texts and candidate pools of one training split."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    texts: dict[str, str]
    pools: dict[str, list[str]]
    owners: dict[str, tuple[str, ...]]

    def lineage(self, doc_ids: set[str] | None = None) -> Lineage:
        """Lineage over the given documents (default: every pool and positive) and every query."""
        docs = doc_ids if doc_ids is not None else self.pool_docs()
        owners = {o for d in docs for o in self.owners.get(d, ())}
        owners |= {o for q in self.queries for o in self.owners.get(f"query:{q}", ())}
        return Lineage(doc_ids=sorted(docs), owner_ids=sorted(owners), query_ids=sorted(self.queries))

    def pool_docs(self) -> set[str]:
        docs = {d for pool in self.pools.values() for d in pool}
        return docs | {d for q in self.queries for d in self.qrels.get(q, {})}


def training_data(ws: Workspace, ds: Dataset, split: str = "train", query_ids: Sequence[str] | None = None,
                  pool_depth: int = 30) -> TrainingData:
    """Pools from the workspace's BM25 + dense indexes (RRF) for the split's (or given) queries."""
    qrels = ds.split_qrels(split)
    qids = [q for q in (query_ids or qrels) if q in qrels and q in ds.queries]
    if not qids:
        raise LetheError(f"no training queries in split {split!r} of {ds.name}")
    queries = {q: ds.queries[q].text for q in qids}
    retrievers = [ws.load_index(n) for n in ("bm25", "dense")]
    pools = build_pools(queries, retrievers, depth=pool_depth)
    present = set(ws.store.ids())
    texts = {d.id: d.contents for d in ds.corpus.values() if d.id in present}
    owners = {d.id: d.owners for d in ds.corpus.values()}
    owners.update({f"query:{q}": ds.queries[q].owners for q in qids})
    qrels = {q: {d: r for d, r in qrels[q].items() if d in texts} for q in qids}
    return TrainingData(queries, qrels, texts, {q: [d for d in p if d in texts] for q, p in pools.items()}, owners)


def listwise_groups(data: TrainingData, n_negatives: int = 7) -> tuple[list[Group], set[str]]:
    """Teacher training groups: each positive with the top non-judged pool candidates."""
    groups, seen = [], set()
    for q, pool in data.pools.items():
        negs = [d for d in pool if d not in data.qrels[q]][:n_negatives]
        for p, rel in data.qrels[q].items():
            if rel > 0 and negs:
                groups.append(Group(data.queries[q], data.texts[p], [data.texts[d] for d in negs]))
                seen.update([p, *negs])
    return groups, seen


def train_teacher(ws: Workspace, data: TrainingData, name: str = "teacher", base: str = DEFAULT_ENCODER,
                  cfg: CETrainConfig | None = None, n_negatives: int = 7,
                  on_step: Progress | None = None) -> tuple[ArtifactRef, list[float]]:
    """Train a cross-encoder from ``base`` (a registry bi-encoder or cross-encoder) and register it."""
    from sentence_transformers import CrossEncoder

    cfg = cfg or CETrainConfig()
    base_ref = _ensure(ws, base)
    model = CrossEncoder(str(ws.registry.resolve_path(base_ref)), num_labels=1, device="cpu")
    groups, seen = listwise_groups(data, n_negatives)
    losses = train_cross_encoder(model, groups, cfg, on_step)
    extra = {"train": _jsonable(cfg.__dict__), "steps": len(losses), "final_loss": losses[-1] if losses else None,
             "max_length": cfg.max_length}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        ref = _register_or_derive(ws, ModelSpec(name=name, kind="cross_encoder", source="path:payload",
                                                params={"max_length": cfg.max_length}),
                                  Path(tmp), data.lineage(seen | data.pool_docs()), {"init": base_ref}, extra)
    return ref, losses


def teacher_reranker(ws: Workspace, teacher: str, batch_size: int = 32) -> CrossEncoderReranker:
    """The registered teacher as a reranker."""
    ref = ws.registry.get(teacher)
    model = ws.registry.load(ref)
    return CrossEncoderReranker(model, str(ref), batch_size, ref.manifest.get("params", {}).get("max_length", 256))


def score_pools(ws: Workspace, data: TrainingData, teacher: str, name: str | None = None,
                show_progress: bool = True) -> tuple[ArtifactRef, TeacherScores]:
    """Score every pool candidate with the teacher; register the scores as a ``cache`` artifact."""
    rr = teacher_reranker(ws, teacher)
    scores = TeacherScores.compute(data.pools, data.qrels, data.queries, data.texts,
                                   lambda pairs: rr.score_pairs(pairs, show_progress), teacher=rr.version)
    tref = ws.registry.get(teacher)
    with tempfile.TemporaryDirectory() as tmp:
        scores.save(Path(tmp) / "scores.json")
        ref = _register_or_derive(ws, ModelSpec(name=name or f"{tref.name}-scores", kind="cache",
                                                source="path:payload"),
                                  Path(tmp), data.lineage(scores.doc_ids()), {"teacher": tref}, {"teacher": str(tref)})
    return ref, scores


def load_scores(ws: Workspace, cache: str) -> TeacherScores:
    """Teacher scores from a registered cache artifact."""
    return TeacherScores.load(ws.registry.resolve_path(cache) / "scores.json")


def train_embedder(ws: Workspace, data: TrainingData, cache: str, cfg: EmbedTrainConfig, name: str,
                   base: str = DEFAULT_ENCODER, n_negatives: int = 7, ratio: float | None = 0.95,
                   margin: float | None = None, lora: dict[str, Any] | None = None,
                   on_step: Progress | None = None) -> tuple[ArtifactRef, TrainResult, list[MinedExample]]:
    """Mine negatives with the cached teacher scores, train a student, register it with lineage."""
    import math

    cache_ref = ws.registry.get(cache)
    scores = load_scores(ws, str(cache_ref))
    examples = mine(data.pools, data.qrels, scores, n_negatives, ratio, margin,
                    transform=lambda x: 1.0 / (1.0 + math.exp(-x)))
    if not examples:
        raise LetheError("no training example survived mining; lower n_negatives or relax the margin")
    base_ref = _ensure(ws, base)
    model = ws.registry.load(base_ref)
    if lora is not None:
        from lethe.embedding.llm import add_lora

        add_lora(model, **lora)
    result = train_bi_encoder(model, examples, data.queries, data.texts, cfg, on_step)
    seen = {e.positive for e in examples} | {d for e in examples for d in e.negatives} | scores.doc_ids()
    teacher_ref = ws.registry.get(cache_ref.manifest.get("extra", {}).get("teacher") or cache_ref.name)
    parents = {"teacher": teacher_ref, "cache": cache_ref, "init": base_ref}
    params = {"query_prompt": query_prompt(cfg), "recipe": cfg.recipe}
    extra = {"train": cfg.to_dict(), "steps": result.steps, "seconds": round(result.seconds, 1),
             "examples": len(examples)}
    with tempfile.TemporaryDirectory() as tmp:
        if lora is not None:
            from lethe.embedding.llm import save_adapter

            save_adapter(model, tmp)
            spec = ModelSpec(name=name, kind="adapter", source="path:payload", base=str(base_ref), params=params)
        else:
            model.save(tmp)
            spec = ModelSpec(name=name, kind="bi_encoder", source="path:payload", params=params)
        ref = _register_or_derive(ws, spec, Path(tmp), data.lineage(seen), parents, extra)
    return ref, result, examples


def _ensure(ws: Workspace, name: str) -> ArtifactRef:
    if name.split("@")[0] == DEFAULT_ENCODER:
        ws._ensure_default_encoder()
    return ws.registry.get(name)


def _register_or_derive(ws: Workspace, spec: ModelSpec, payload: Path, lineage: Lineage,
                        parents: Mapping[str, Any], extra: dict[str, Any]) -> ArtifactRef:
    """Version 1 of a new name, or a new version (retraining never overwrites)."""
    from lethe.errors import RegistryError

    try:
        old = ws.registry.get(spec.name)
    except RegistryError:
        return ws.registry.register(spec, payload_dir=payload, lineage=lineage, parents=dict(parents), extra=extra)
    return ws.registry.derive(old, payload_dir=payload, lineage=lineage, extra=extra, relation="retrained_from",
                              inherit_lineage=False, params=spec.params, parents=parents)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps({k: v for k, v in d.items() if k != "history"}, default=str))


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory (helper for tests and benchmarks)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
