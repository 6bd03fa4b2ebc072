"""Training pipelines: teacher cross-encoder, teacher-score cache, DSE / LG-ANNA students — with lineage.

Every model trained here is registered with the exact data it saw: the training query ids, every
document id that entered a training example or a candidate pool, the owners of those documents and
queries, its teacher and the teacher-score cache (parent edges), so that
``registry.affected_by([doc])`` finds the teacher, the cache and every student trained through them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lethe.data import Dataset
from lethe.embedding.train import EmbedTrainConfig, TrainResult, query_prompt, train_bi_encoder
from lethe.errors import LetheError
from lethe.pipelines.workspace import DEFAULT_ENCODER, Workspace
from lethe.ranking.cross_encoder import (
    CETrainConfig,
    CrossEncoderReranker,
    Group,
    segment_head,
    train_cross_encoder,
    use_segment_head,
)
from lethe.registry import ArtifactRef, Lineage, ModelSpec
from lethe.training.pools import MinedExample, TeacherScores, build_pools, load_examples, mine, save_examples
from lethe.unlearning.audit import AUDIT_FILE, AuditReference, hold_out

Progress = Callable[[int, int, float], None]
#: every trained model's payload keeps the exact groups it was trained on (unlearning reads them)
EXAMPLES_FILE = "examples.jsonl"


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

    def hold_out(self, frac: float = 0.15, seed: int = 0) -> tuple[TrainingData, AuditReference | None]:
        """The data without held-out queries, and the audit reference they make (``frac=0``: no hold-out).

        The held-out queries never enter training: their relevant pairs are the model's registered
        non-members, their qrels its retain probe (``lethe.unlearning.audit``).
        """
        if frac <= 0:
            return self, None
        held, ref = hold_out(self.qrels, frac, seed=seed)
        keep = [q for q in self.queries if q not in held]
        if not held or not keep:
            return self, None
        return TrainingData({q: self.queries[q] for q in keep}, {q: self.qrels[q] for q in keep}, self.texts,
                            {q: p for q, p in self.pools.items() if q not in held}, self.owners), ref

    def query_owners(self) -> dict[str, tuple[str, ...]]:
        """Query id -> owners (from the ``query:ID`` keys of ``owners``)."""
        return {k.split(":", 1)[1]: v for k, v in self.owners.items() if k.startswith("query:")}

    def pool_docs(self) -> set[str]:
        docs = {d for pool in self.pools.values() for d in pool}
        return docs | {d for q in self.queries for d in self.qrels.get(q, {})}


def training_data(ws: Workspace, ds: Dataset, split: str = "train", query_ids: Sequence[str] | None = None,
                  pool_depth: int = 30, indexes: Sequence[str] = ("bm25", "dense")) -> TrainingData:
    """Pools from the workspace's ``indexes`` (RRF; BM25 + dense by default) for the split's (or given) queries."""
    qrels = ds.split_qrels(split)
    qids = [q for q in (query_ids or qrels) if q in qrels and q in ds.queries]
    if not qids:
        raise LetheError(f"no training queries in split {split!r} of {ds.name}")
    queries = {q: ds.queries[q].text for q in qids}
    retrievers = [ws.load_index(n) for n in indexes]
    pools = build_pools(queries, retrievers, depth=pool_depth)
    present = set(ws.store.ids())
    texts = {d.id: d.contents for d in ds.corpus.values() if d.id in present}
    owners = {d.id: d.owners for d in ds.corpus.values()}
    owners.update({f"query:{q}": ds.queries[q].owners for q in qids})
    gone = ws.ledger.forgotten_hashes("label")  # judgements forgotten by `lethe forget --label` stay forgotten
    qrels = {q: {d: r for d, r in qrels[q].items() if d in texts and not (gone and forgotten_label(ws, q, d, gone))}
             for q in qids}
    return TrainingData(queries, qrels, texts, {q: [d for d in p if d in texts] for q, p in pools.items()}, owners)


def forgotten_label(ws: Workspace, query_id: str, doc_id: str, gone: set[str]) -> bool:
    """Whether the judgement (query, doc) was forgotten (its keyed hash is a label tombstone)."""
    return ws.ledger.hash_labels([(query_id, doc_id)])[0] in gone


def listwise_groups(data: TrainingData, n_negatives: int = 7) -> tuple[list[Group], set[str]]:
    """Teacher training groups: each positive with the top non-judged pool candidates."""
    rows = listwise_rows(data, n_negatives)
    groups = keyed_groups(rows, data.queries, data.texts)
    return groups, {d for r in rows for d in (r.positive, *r.negatives)}


def listwise_rows(data: TrainingData, n_negatives: int = 7) -> list[MinedExample]:
    """The teacher's training groups by id (no teacher scores: zeros), in training order."""
    rows = []
    for q, pool in data.pools.items():
        negs = tuple(d for d in pool if d not in data.qrels[q])[:n_negatives]
        for p, rel in data.qrels[q].items():
            if rel > 0 and negs:
                rows.append(MinedExample(q, p, negs, (0.0,) * (1 + len(negs))))
    return rows


def keyed_groups(rows: Sequence[MinedExample], queries: Mapping[str, str], texts: Mapping[str, str]) -> list[Group]:
    """Cross-encoder training groups in text, each keyed by (query id, positive id) (ELR's targets use the key),
    with the rows' teacher scores (read only when the training distils)."""
    return [Group(queries[r.query_id], texts[r.positive], [texts[d] for d in r.negatives], key=(r.query_id, r.positive),
                  teacher=tuple(r.teacher)) for r in rows]


def distill_rows(rows: Sequence[MinedExample], scores: TeacherScores) -> list[MinedExample]:
    """``rows`` with the teacher's scores of [positive, *negatives] (rows the teacher did not score in full
    are dropped: a group needs every margin)."""
    out = []
    for r in rows:
        per = scores.scores.get(r.query_id, {})
        docs = (r.positive, *r.negatives)
        if all(d in per for d in docs):
            out.append(MinedExample(r.query_id, r.positive, r.negatives, tuple(per[d] for d in docs)))
    return out


def new_cross_encoder(ws: Workspace, base_ref: ArtifactRef, seed: int, gate: float = -6.0,  # noqa: ANN201
                      listwise: bool = False, passage_view: str = "head"):
    """A ``CrossEncoder`` grown from a registry model (its new head drawn with ``seed``: the same every time).

    Grown from a bi-encoder, it is scored by the gated segment-cosine head (``use_segment_head``; with
    ``listwise``, the one-pass list head, showing each candidate as ``passage_view``): it starts as good as
    that bi-encoder. Grown from a cross-encoder, it keeps that model's head.
    """
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    model = CrossEncoder(str(ws.registry.resolve_path(base_ref)), num_labels=1, device="cpu")
    if base_ref.kind == "bi_encoder" and segment_head(model) is None:
        use_segment_head(model, gate=gate, listwise=listwise, passage_view=passage_view)
    return model


def train_teacher(ws: Workspace, data: TrainingData, name: str = "teacher", base: str = DEFAULT_ENCODER,
                  cfg: CETrainConfig | None = None, n_negatives: int = 7,
                  on_step: Progress | None = None, reference: AuditReference | None = None,
                  shards: int = 0, shard_lr_scale: float = 5.0, cache: str | None = None,
                  ) -> tuple[ArtifactRef, list[float]]:
    """Train a cross-encoder from ``base`` (a registry bi-encoder or cross-encoder) and register it.

    ``shards`` > 1 trains SISA shards by owner instead (:func:`train_shards`); ``reference`` (from
    :meth:`TrainingData.hold_out`) is registered with the model for the unlearning audit. ``cache`` (a score
    cache of :func:`score_pools`) gives the teacher scores that ``cfg.distill`` > 0 distils (MarginMSE); the
    cache and its teacher become the model's parents, so that forgetting re-scores before it retrains.
    """
    from lethe.training.scorers import CrossEncoderScorer

    cfg = cfg or CETrainConfig()
    base_ref = _ensure(ws, base)
    rows = listwise_rows(data, n_negatives)
    parents: dict[str, Any] = {"init": base_ref}
    if cfg.distill:
        if cache is None:
            raise LetheError("distillation needs the teacher's scores: give a score cache (--distill-from)")
        cache_ref = ws.registry.get(cache)
        scores = load_scores(ws, str(cache_ref))
        rows = distill_rows(rows, scores)
        if not rows:
            raise LetheError(f"{cache_ref} scores none of the training groups in full; score this split's pools")
        parents["teacher"] = ws.registry.get(cache_ref.manifest.get("extra", {}).get("teacher") or cache_ref.name)
        parents["cache"] = cache_ref
    seen = {d for r in rows for d in (r.positive, *r.negatives)}
    t0 = time.perf_counter()
    model = new_cross_encoder(ws, base_ref, cfg.seed, cfg.gate, cfg.listwise, cfg.passage_view)
    sharded = None
    if shards:
        sharded = train_shards(CrossEncoderScorer(model, max_length=cfg.max_length),
                               cross_encoder_recipe(cfg, data.queries, data.texts, shard_lr_scale), rows, data, shards)
        model, losses = sharded.combined().model, []
    else:
        losses = train_cross_encoder(model, keyed_groups(rows, data.queries, data.texts), cfg, on_step)
    extra = {"train": jsonable(cfg.to_dict()), "steps": len(losses), "final_loss": losses[-1] if losses else None,
             "max_length": cfg.max_length, "seconds": round(time.perf_counter() - t0, 1)}
    if sharded is not None:
        extra["sharded"] = {"k": shards, "lr_scale": shard_lr_scale, "combine": sharded.combine}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        write_training_record(Path(tmp), rows, reference, sharded)
        ref = register_or_derive(ws, ModelSpec(name=name, kind="cross_encoder", source="path:payload",
                                                params={"max_length": cfg.max_length}),
                                  Path(tmp), data.lineage(seen | data.pool_docs()), parents, extra)
    return ref, losses


SHARDS_DIR = "shards"


def write_training_record(folder: Path, rows: Sequence[MinedExample] | None, reference: AuditReference | None,
                          sharded: Any = None) -> None:
    """What a trained model keeps beside its weights: its groups (None: not known, none written), its audit
    reference, its shards."""
    if rows is not None:
        save_examples(folder / EXAMPLES_FILE, rows)
    if reference is not None:
        reference.save(folder / AUDIT_FILE)
    if sharded is not None:
        sharded.save(folder / SHARDS_DIR)


def read_reference(ws: Workspace, name: str) -> AuditReference | None:
    """The audit reference registered with a model (None when it was trained without one)."""
    path = ws.registry.resolve_path(ws.registry.get(name)) / AUDIT_FILE
    return AuditReference.load(path) if path.exists() else None


def cross_encoder_recipe(cfg: CETrainConfig, queries: Mapping[str, str], texts: Mapping[str, str],
                         lr_scale: float = 1.0) -> Callable[[Any, list[MinedExample]], None]:
    """The teacher's recipe as a shard recipe (listwise groups by id; ``lr_scale`` x the rate)."""
    from dataclasses import replace

    scaled = replace(cfg, lr=cfg.lr * lr_scale, max_seconds=None)

    def recipe(scorer: Any, rows: list[MinedExample]) -> None:
        train_cross_encoder(scorer.model, keyed_groups(rows, queries, texts), scaled)

    return recipe


def bi_encoder_recipe(cfg: EmbedTrainConfig, queries: Mapping[str, str], texts: Mapping[str, str],
                      lr_scale: float = 1.0) -> Callable[[Any, list[MinedExample]], None]:
    """A student's recipe as a shard recipe (``lr_scale`` x the rate; contrastive in deletion-stable order)."""
    from dataclasses import replace

    scaled = replace(cfg, lr=cfg.lr * lr_scale, max_seconds=None)

    def recipe(scorer: Any, rows: list[MinedExample]) -> None:
        fit_bi_encoder(scorer.model, rows, queries, texts, scaled, stable_order=True)

    return recipe


def fit_bi_encoder(model: Any, rows: Sequence[MinedExample], queries: Mapping[str, str], texts: Mapping[str, str],
                   cfg: EmbedTrainConfig, on_step: Progress | None = None, stable_order: bool = False) -> TrainResult:
    """Train a bi-encoder in place with ``cfg.recipe``: ``contrastive`` (InfoNCE over each group, no
    teacher: ``lethe.unlearning.methods.train_groups``) or a distillation recipe (``train_bi_encoder``)."""
    if cfg.recipe != "contrastive":
        return train_bi_encoder(model, rows, queries, texts, cfg, on_step)
    from lethe.training.contrastive import train_groups
    from lethe.training.scorers import BiEncoderScorer

    t0 = time.perf_counter()
    scorer = BiEncoderScorer(model, max_length=cfg.max_length, query_prompt=query_prompt(cfg))
    losses = train_groups(scorer, rows, queries, texts, cfg.epochs, cfg.lr, cfg.batch_size, seed=cfg.seed,
                          on_step=on_step, stable_order=stable_order, elr=cfg.elr)
    return TrainResult(losses, time.perf_counter() - t0, len(losses))


def train_shards(base: Any, recipe: Callable[[Any, list[MinedExample]], None], rows: Sequence[MinedExample],
                 data: TrainingData, k: int) -> Any:
    """SISA shards by owner over ``base`` (every weight of a shard trained; served as the mean of their
    weight changes, rounded as stored)."""
    from lethe.unlearning.sharded import ShardedModel

    if k < 2:
        raise LetheError(f"shards must be at least 2 (or 0: no shards), not {k}")
    model = ShardedModel(base, recipe, k=k, lora_r=0)
    model.fit(rows, {d: o for d, o in data.owners.items() if not d.startswith("query:")}, data.query_owners())
    model.round_checkpoints()
    return model


def read_examples(ws: Workspace, name: str) -> list[MinedExample]:
    """The training groups recorded with a trained model (teacher or student)."""
    path = ws.registry.resolve_path(ws.registry.get(name)) / EXAMPLES_FILE
    if not path.exists():
        raise LetheError(f"{name} has no recorded training groups ({path.name}); it cannot be unlearned exactly")
    return load_examples(path)


def teacher_reranker(ws: Workspace, teacher: str, batch_size: int = 32) -> CrossEncoderReranker:
    """The registered teacher as a reranker."""
    ref = ws.registry.get(teacher)
    model = ws.registry.load(ref)
    return CrossEncoderReranker(model, str(ref), batch_size, ref.manifest.get("params", {}).get("max_length", 256))


def score_pools(ws: Workspace, data: TrainingData, teacher: str, name: str | None = None,
                show_progress: bool = True, fusion: Mapping[str, float] | None = None,
                ) -> tuple[ArtifactRef, TeacherScores]:
    """Score every pool candidate with the teacher; register the scores as a ``cache`` artifact.

    With ``fusion`` (weights for ``ce``, ``bm25``, ``dense``), the teacher score is the convex
    combination of the per-query min-max normalised cross-encoder, BM25 and dense scores — the
    LG-ANNA teacher reading (first-stage evidence plus a reranker); the scores are then in [0, 1].
    """
    rr = teacher_reranker(ws, teacher)
    scores = TeacherScores.compute(data.pools, data.qrels, data.queries, data.texts,
                                   lambda pairs: rr.score_pairs(pairs, show_progress), teacher=rr.version)
    extra: dict[str, Any] = {"teacher": rr.version, "scale": "logit"}
    if fusion:
        scores = fuse_teacher(ws, data, scores, fusion)
        extra.update(scale="unit", fusion=dict(fusion),
                     fusion_sources=[str(i.ref) for i in ws.indexes() if i.ref.name in ("bm25", "dense")])
    tref = ws.registry.get(teacher)
    with tempfile.TemporaryDirectory() as tmp:
        scores.save(Path(tmp) / "scores.json")
        ref = register_or_derive(ws, ModelSpec(name=name or f"{tref.name}-scores", kind="cache",
                                                source="path:payload", params={"scale": extra["scale"]}),
                                  Path(tmp), data.lineage(scores.doc_ids()), {"teacher": tref}, extra)
    return ref, scores


def fuse_teacher(ws: Workspace, data: TrainingData, ce: TeacherScores, weights: Mapping[str, float]) -> TeacherScores:
    """Per query: ``sum_k w_k * minmax(score_k)`` over the query's scored documents, k in ce/bm25/dense."""
    import numpy as np

    bad = set(weights) - {"ce", "bm25", "dense"}
    if bad or not np.isclose(sum(weights.values()), 1.0):
        raise LetheError(f"fusion weights must be among ce/bm25/dense and sum to 1, got {dict(weights)}")
    bm25, dense = ws.load_index("bm25"), ws.load_index("dense")
    qids = list(ce.scores)
    qvecs = dense.encoder.encode_queries([data.queries[q] for q in qids])
    out: dict[str, dict[str, float]] = {}
    for q, qv in zip(qids, qvecs):
        docs = list(ce.scores[q])
        full = bm25.score_tokens(bm25.analyzer(data.queries[q]))
        parts = {"ce": np.array([ce.scores[q][d] for d in docs]),
                 "bm25": np.array([full[bm25.doc_index[d]] if d in bm25.doc_index else 0.0 for d in docs]),
                 "dense": dense.vectors(docs) @ qv}
        total = sum(w * _minmax(parts[k]) for k, w in weights.items())
        out[q] = {d: float(v) for d, v in zip(docs, total)}
    return TeacherScores(out, ce.teacher)


def _minmax(x):  # noqa: ANN001, ANN202
    span = x.max() - x.min() if len(x) else 0.0
    return (x - x.min()) / span if span > 0 else x * 0.0 + 0.5


def load_scores(ws: Workspace, cache: str) -> TeacherScores:
    """Teacher scores from a registered cache artifact."""
    return TeacherScores.load(ws.registry.resolve_path(cache) / "scores.json")


def train_embedder(ws: Workspace, data: TrainingData, cache: str | None, cfg: EmbedTrainConfig, name: str,
                   base: str = DEFAULT_ENCODER, n_negatives: int = 7, ratio: float | None = 0.95,
                   margin: float | None = None, lora: dict[str, Any] | None = None,
                   on_step: Progress | None = None, reference: AuditReference | None = None,
                   shards: int = 0, shard_lr_scale: float = 5.0,
                   ) -> tuple[ArtifactRef, TrainResult, list[MinedExample]]:
    """Train a student and register it with lineage: mined with the cached teacher scores (``dse`` /
    ``lganna``), or on the pools' listwise groups without a teacher (``contrastive``, ``cache=None``).

    ``shards`` > 1 trains SISA shards by owner (:func:`train_shards`), served as one merged model.
    """
    examples, scores, cache_ref = _student_rows(ws, data, cache, cfg, n_negatives, ratio, margin)
    base_ref = _ensure(ws, base)
    model = ws.registry.load(base_ref)
    if lora is not None:
        from lethe.embedding.llm import add_lora

        add_lora(model, **lora)
    sharded = None
    if shards:
        if lora is not None:
            raise LetheError("--shards trains every weight of each shard; it cannot be combined with LoRA")
        from lethe.training.scorers import BiEncoderScorer

        t0 = time.perf_counter()
        sharded = train_shards(BiEncoderScorer(model, cfg.max_length, query_prompt(cfg)),
                               bi_encoder_recipe(cfg, data.queries, data.texts, shard_lr_scale), examples, data, shards)
        model = sharded.combined().model
        result = TrainResult([], time.perf_counter() - t0, 0)
    else:
        result = fit_bi_encoder(model, examples, data.queries, data.texts, cfg, on_step)
    seen = {e.positive for e in examples} | {d for e in examples for d in e.negatives}
    parents: dict[str, Any] = {"init": base_ref}
    if cache_ref is not None:
        seen |= scores.doc_ids()
        parents["teacher"] = ws.registry.get(cache_ref.manifest.get("extra", {}).get("teacher") or cache_ref.name)
        parents["cache"] = cache_ref
    params = {"query_prompt": query_prompt(cfg), "recipe": cfg.recipe}
    extra = {"train": cfg.to_dict(), "steps": result.steps, "seconds": round(result.seconds, 1),
             "examples": len(examples)}
    if sharded is not None:
        extra["sharded"] = {"k": shards, "lr_scale": shard_lr_scale, "combine": sharded.combine}
    with tempfile.TemporaryDirectory() as tmp:
        if lora is not None:
            from lethe.embedding.llm import save_adapter

            save_adapter(model, tmp)
            spec = ModelSpec(name=name, kind="adapter", source="path:payload", base=str(base_ref), params=params)
        else:
            model.save(tmp)
            spec = ModelSpec(name=name, kind="bi_encoder", source="path:payload", params=params)
        write_training_record(Path(tmp), examples, reference, sharded)
        ref = register_or_derive(ws, spec, Path(tmp), data.lineage(seen), parents, extra)
    return ref, result, examples


def _student_rows(ws: Workspace, data: TrainingData, cache: str | None, cfg: EmbedTrainConfig, n_negatives: int,
                  ratio: float | None, margin: float | None) -> tuple[list[MinedExample], Any, Any]:
    """The student's groups: mined with teacher scores, or the pools' listwise groups (``contrastive``)."""
    import math

    if cfg.recipe == "contrastive" or cache is None:
        if cfg.recipe != "contrastive":
            raise LetheError(f"recipe {cfg.recipe!r} distils a teacher: give the teacher (or use --recipe contrastive)")
        rows = listwise_rows(data, n_negatives)
        if not rows:
            raise LetheError("no training group: no training query has a judged positive and a pool negative")
        return rows, None, None
    cache_ref = ws.registry.get(cache)
    scores = load_scores(ws, str(cache_ref))
    logits = cache_ref.manifest.get("params", {}).get("scale", "logit") == "logit"
    sigmoid = (lambda x: 1.0 / (1.0 + math.exp(-x))) if logits else None
    cfg.teacher_sigmoid = logits
    examples = mine(data.pools, data.qrels, scores, n_negatives, ratio, margin, transform=sigmoid)
    if not examples:
        raise LetheError("no training example survived mining; lower n_negatives or relax the margin")
    return examples, scores, cache_ref


def _ensure(ws: Workspace, name: str) -> ArtifactRef:
    if name.split("@")[0] == DEFAULT_ENCODER:
        ws._ensure_default_encoder()
    return ws.registry.get(name)


def register_or_derive(ws: Workspace, spec: ModelSpec, payload: Path, lineage: Lineage,
                        parents: Mapping[str, Any], extra: dict[str, Any]) -> ArtifactRef:
    """Version 1 of a new name, or a new version (retraining never overwrites)."""
    from lethe.errors import RegistryError

    try:
        old = ws.registry.get(spec.name)
    except RegistryError:
        return ws.registry.register(spec, payload_dir=payload, lineage=lineage, parents=dict(parents), extra=extra)
    return ws.registry.derive(old, payload_dir=payload, lineage=lineage, extra=extra, relation="retrained_from",
                              inherit_lineage=False, params=spec.params, parents=parents)


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, default=str))


def progress_bar(desc: str) -> tuple[Progress, Callable[[], None]]:
    """An ``on_step`` callback drawing a tqdm bar (loss in the postfix) and its closer."""
    from tqdm.auto import tqdm

    state: dict[str, Any] = {}

    def on_step(step: int, total: int, loss: float) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="step")
        state["bar"].update(1)
        state["bar"].set_postfix(loss=f"{loss:.4f}")

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return on_step, close


def rerank_eval(ws: Workspace, ds: Dataset, teacher: str, split: str = "test", depth: int = 100,
                query_ids: Sequence[str] | None = None) -> dict[str, float]:
    """nDCG@10 / RR@10 of BM25 top-``depth`` re-ranked by the teacher."""
    from lethe.pipelines.evaluate import evaluate

    rr = teacher_reranker(ws, teacher)
    qrels = ds.split_qrels(split)
    qids = [q for q in (query_ids or qrels) if q in qrels]
    hits = ws.load_index("bm25").search([ds.queries[q].text for q in qids], depth)
    texts = {d.id: d.contents for d in ws.store.get_many({h.doc_id for hs in hits for h in hs})}
    rr.texts = texts
    run = {q: {h.doc_id: h.score for h in rr.rerank(ds.queries[q].text, hs)} for q, hs in zip(qids, hits)}
    return evaluate(run, {q: qrels[q] for q in qids}, ["nDCG@10", "RR@10"])[0]


def model_eval(ws: Workspace, ds: Dataset, model: str, split: str = "test",
               query_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Dense retrieval figures of a registry bi-encoder (its index is built on first use)."""
    from lethe.pipelines.evaluate import DEFAULT_MEASURES, evaluate_retriever

    qrels = ds.split_qrels(split)
    qids = [q for q in (query_ids or qrels) if q in qrels]
    index = ws.load_index(ws.model_index(model).name)
    queries = {q: ds.queries[q].text for q in qids}
    return evaluate_retriever(index, queries, {q: qrels[q] for q in qids}, DEFAULT_MEASURES, 100)[0]
