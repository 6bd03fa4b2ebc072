"""Weight unlearning inside ``lethe forget --unlearn METHOD``: every model that saw the data.

For one request, the models found by ``registry.affected_by`` are handled parents first (teacher,
then its score cache, then the students trained through them), *before* the store deletion, while
the forgotten texts can still be read:

* a **cross-encoder** or **bi-encoder** with recorded training groups (``examples.jsonl``): forget /
  retain sets from those groups, the chosen method, a new version registered (``unlearned_from`` the
  old one, lineage without the forgotten ids, its remaining groups recorded), the old one retired;
* a **teacher-score cache**: the forgotten documents' and queries' scores dropped and the rest
  re-scored by the teacher's new version when the teacher was unlearned in this request (a student
  is never re-distilled from a teacher that still remembers) — exact;
* a dense index built with a replaced encoder is re-embedded with the new one after the store step.

A model without recorded groups (e.g. a listwise LLM reranker, or one trained elsewhere) cannot be
unlearned here: it stays listed as still trained on the data and the receipt says so.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lethe.errors import ForgetError, LetheError
from lethe.pipelines.train import SHARDS_DIR, load_scores, read_examples, read_reference, write_training_record
from lethe.pipelines.workspace import Workspace
from lethe.registry import ArtifactRef, Lineage
from lethe.training.contrastive import train_groups
from lethe.training.pools import MinedExample, TeacherScores
from lethe.training.scorers import BiEncoderScorer, CrossEncoderScorer, Scorer, pair_scores
from lethe.unlearning.audit import Audit, AuditReference, run_audit
from lethe.unlearning.base import Method, UnlearnConfig, UnlearnTask
from lethe.unlearning.methods import calibrated_targets
from lethe.unlearning.registry import get_method, method_config
from lethe.unlearning.sets import split_examples
from lethe.unlearning.sharded import shard_of

if TYPE_CHECKING:
    from lethe.unlearning.sharded import ShardedModel

EXACT = ("retrain", "sharded")
#: what ``--unlearn`` accepts: a route (``auto``: the cheapest that reaches a verified level; ``sharded``:
#: retrain the touched shards of a shard-trained model) or a method that produces a plain model of the
#: same kind (``uld`` serves two models, so it cannot replace a registry version here)
PIPELINE_METHODS = ("auto", "sharded", "retrain", "grad_ascent", "grad_diff", "npo", "pdu", "relabel", "reglu",
                    "fit", "ofmu", "laf", "label_mixup", "sae")
#: the methods that need no training groups (label-agnostic: the forgotten documents' texts are enough)
LABEL_FREE = ("laf",)
#: the methods that move a bi-encoder's towers (a cross-encoder has none)
BI_ENCODER_ONLY = ("laf", "label_mixup", "sae")
#: retained documents sampled from the store for a label-free method on a model without recorded groups
LABEL_FREE_RETAIN = 256
#: the approximate method ``auto`` tries first on a model that was not trained in shards
AUTO_METHOD = "relabel"
#: BM25 candidates per probe query re-scored for the audit's retain nDCG@10
PROBE_DEPTH = 10


def scorer_of(ws: Workspace, ref: ArtifactRef) -> Scorer:
    """The registry model as a differentiable scorer."""
    model = ws.registry.load(ref)
    params = ref.manifest.get("params", {}) or {}
    if ref.kind == "cross_encoder":
        return CrossEncoderScorer(model, max_length=params.get("max_length", 192))
    train = (ref.manifest.get("extra", {}) or {}).get("train", {}) or {}
    return BiEncoderScorer(model, max_length=train.get("max_length", 256), query_prompt=params.get("query_prompt"))


@dataclass
class ModelJob:
    """One model of one request: what it saw, its sets, the texts they need, its audit reference."""

    ws: Workspace
    rid: str
    ref: ArtifactRef
    plan: dict[str, Any]
    sets: Any
    queries: dict[str, str]
    texts: dict[str, str]
    reference: AuditReference | None
    replaced: dict[str, str]
    stale_docs: set[str] = field(default_factory=set)     # in its groups, gone from the store before this request
    stale_queries: set[str] = field(default_factory=set)
    #: probe document vectors of the model being registered (cached under its version: the next request's
    #: audit reads them for its "before" figures)
    new_vectors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def sharded(self) -> dict[str, Any] | None:
        """The manifest's shard settings when the model was trained in shards."""
        return (self.ref.manifest.get("extra", {}) or {}).get("sharded")

    @property
    def teacher_replaced(self) -> bool:
        """True when the model distils a score cache replaced earlier in this request."""
        cache = origin_parents(self.ws, self.ref).get("cache")
        return cache is not None and any(k.split("@")[0] == cache.split("@")[0] for k in self.replaced)


def origin_parents(ws: Workspace, ref: ArtifactRef) -> dict[str, str]:
    """The model's training parents (``init``, ``teacher``, ``cache``): its own, or, for a version made by
    unlearning, those of the version it was trained as (following ``unlearned_from`` edges)."""
    seen = set()
    while True:
        parents = {rel: str(p) for rel, p in ws.registry.parents_of(ref)}
        if "unlearned_from" not in parents or "init" in parents or str(ref) in seen:
            return parents
        seen.add(str(ref))
        ref = ws.registry.get(parents["unlearned_from"])


def unlearn_model(ws: Workspace, rid: str, model: str, plan: dict[str, Any], method: str,
                  cfg: UnlearnConfig | None = None, replaced: dict[str, str] | None = None) -> dict[str, Any]:
    """One journaled model step; returns what it did (route, new version, level, audit figures).

    Levels: ``exact`` (lineage proves the data never entered the new weights: a retrain, or the
    retrained shards), ``unlearned`` (an approximate method whose audit passed), ``unverified`` (an
    approximate method whose audit did not pass: the receipt lists the model as possibly still
    holding the data), ``unchanged``, ``not_unlearned``.
    """
    ref = ws.registry.get(model)
    if ref.kind == "cache":
        return _unlearn_cache(ws, rid, ref, plan, replaced or {})
    if ref.kind == "sae":
        from lethe.pipelines.sae import unlearn_sae

        return unlearn_sae(ws, rid, ref, plan, replaced or {})
    if ref.kind in ("adapter", "llm"):
        if plan.get("labels"):
            return {"model": model, "level": "not_unlearned",
                    "why": "a listwise LLM reranker's stored lists are not kept by judgement: retrain it to "
                           "forget a label"}
        return _unlearn_listwise(ws, rid, ref, plan, method)
    if ref.kind not in ("cross_encoder", "bi_encoder"):
        return {"model": model, "level": "not_unlearned", "why": f"no unlearning path for kind {ref.kind}"}
    if method in BI_ENCODER_ONLY and ref.kind != "bi_encoder":
        return {"model": model, "level": "not_unlearned",
                "why": f"{method} moves a bi-encoder's embeddings; a {ref.kind} has no separate towers"}
    try:
        examples = read_examples(ws, model)
    except LetheError as exc:
        if method in LABEL_FREE and ref.kind == "bi_encoder":
            return _unlearn_without_groups(ws, rid, ref, plan, method, cfg)
        return {"model": model, "level": "not_unlearned", "why": str(exc)}
    stale_docs, stale_queries = _already_gone(ws, examples)
    if stale_docs or stale_queries:  # forgotten earlier without unlearning this model: never trained on again
        examples = split_examples(examples, stale_docs, stale_queries).remaining
    sets = split_examples(examples, plan["doc_ids"], plan["query_ids"],
                          labels={tuple(p) for p in plan.get("labels", [])})
    reference = read_reference(ws, model)
    if not sets.forget and not sets.touched:  # ids only in its audit reference are scrubbed with the workspace
        return {"model": model, "level": "unchanged", "why": "its training groups never used the data"}
    job = ModelJob(ws, rid, ref, plan, sets, _queries(ws, sets), _texts(ws, sets), reference, replaced or {},
                   stale_docs, stale_queries)
    route = choose_route(job, method)
    if route is None:
        return {"model": model, "level": "not_unlearned", "touched_groups": len(sets.touched),
                "why": _why_not(job, method)}
    if route in ("sharded", "retrain"):
        return _exact(job, route, method)
    return _approximate(job, route, method == "auto", cfg)


def _unlearn_without_groups(ws: Workspace, rid: str, ref: ArtifactRef, plan: dict[str, Any], method: str,
                            cfg: UnlearnConfig | None) -> dict[str, Any]:
    """A label-free method on a model whose training groups are not known: the forgotten documents' texts
    and a seeded sample of the store's other documents are all it reads. With no member pairs there is
    nothing to audit, so the level is ``unverified``; no groups are recorded with the new version either."""

    from lethe.unlearning.sets import UnlearnSets

    docs = set(plan["doc_ids"])
    texts = {d.id: d.contents for d in ws.store.get_many(sorted(docs))} | _store_sample(ws, docs)
    if not docs & set(texts):
        return {"model": str(ref), "level": "not_unlearned", "why": "no forgotten document's text is in the store"}
    job = ModelJob(ws, rid, ref, plan, UnlearnSets([], [], [], [], docs), {}, texts, None, {})
    original = scorer_of(ws, ref)
    result = get_method(method).run(UnlearnTask(original.copy(), job.sets, {}, texts, reference=original),
                                    method_config(method, cfg))
    new = _register(job, result.scorer, None, result.method, None)
    return {"model": str(ref), "new": str(new), "route": method, "method": result.method, "level": "unverified",
            "requested": method, "forget_docs": result.info.get("forget_docs"), "seconds": round(result.seconds, 2),
            "audit": None, "why": "its training groups are not recorded: forgotten without labels, and with no "
                                  "member pairs to test, the audit cannot verify it"}


def _store_sample(ws: Workspace, exclude: set[str], n: int = LABEL_FREE_RETAIN) -> dict[str, str]:
    """The texts of a seeded sample of ``n`` store documents outside ``exclude``."""
    import random

    others = sorted(set(ws.store.ids()) - exclude)
    return {d.id: d.contents for d in ws.store.get_many(random.Random(0).sample(others, min(n, len(others))))}


def _already_gone(ws: Workspace, examples: list[MinedExample]) -> tuple[set[str], set[str]]:
    """Documents and queries of ``examples`` no longer in the store (forgotten by an earlier request)."""
    docs = {d for e in examples for d in (e.positive, *e.negatives)}
    queries = {e.query_id for e in examples}
    return docs - set(ws.store.hashes(docs)), queries - set(ws.store.query_texts(queries))


def choose_route(job: ModelJob, method: str) -> str | None:
    """The route for ``method`` on this model (None: it cannot be unlearned that way)."""
    if job.sets.labels and job.sharded and method in ("auto", "sharded"):
        return "retrain"  # shards are cut by document and owner, not by judgement: every shard is refitted
    if method == "auto":
        if job.sharded:
            return "retrain" if job.teacher_replaced else "sharded"
        return AUTO_METHOD if job.sets.forget else "retrain"
    if method == "sharded":
        return ("retrain" if job.teacher_replaced else "sharded") if job.sharded else None
    if not job.sets.forget and method != "retrain":
        return None
    return method


def _why_not(job: ModelJob, method: str) -> str:
    if method == "sharded":
        return "it was not trained in shards (train it with --shards K to make this route possible)"
    return "the data was only a negative in its groups; only retrain removes that influence"


def _exact(job: ModelJob, route: str, method: str) -> dict[str, Any]:
    """Retrain the touched shards (``sharded``) or the whole model (``retrain``, shard by shard when sharded)."""
    t0 = time.perf_counter()
    original = scorer_of(job.ws, job.ref)
    sharded = _load_shards(job) if job.sharded else None
    info: dict[str, Any] = {}
    if sharded is not None and route == "sharded":
        hit, _ = sharded.forget(job.sets.docs | job.stale_docs, job.sets.queries | job.stale_queries)
        info["shards_retrained"] = hit
    elif sharded is not None:
        sharded = _refit_shards(job, sharded)
        info["shards_retrained"] = sorted(sharded.shards)
    if sharded is not None:
        sharded.round_checkpoints()
        if not sharded.proves_forgotten(job.sets.docs | job.stale_docs, job.sets.queries | job.stale_queries):
            raise ForgetError(f"internal: a shard of {job.ref} still holds the forgotten data after retraining")
        scorer = sharded.combined()
    else:
        scorer = _retrain(job.ws, job.ref, job.sets.remaining, job.queries, job.texts, job.replaced)
    seconds = time.perf_counter() - t0
    audit = _audit(job, scorer, original, relearn=False)  # figures for the record: the level rests on lineage
    rows = sharded_rows(sharded) if sharded is not None else job.sets.remaining
    new = _register(job, scorer, rows, route, sharded)
    return {"model": str(job.ref), "new": str(new), "route": route, "method": route, "level": "exact",
            "requested": method, "forget_groups": len(job.sets.forget), "touched_groups": len(job.sets.touched),
            "seconds": round(seconds, 2), "audit": audit.to_dict() if audit else None, **info}


def _approximate(job: ModelJob, method: str, escalate: bool, cfg: UnlearnConfig | None) -> dict[str, Any]:
    """Run an approximate method, audit it; with ``escalate`` (``auto``), retrain when the audit fails."""
    t0 = time.perf_counter()
    original = scorer_of(job.ws, job.ref)
    if method == "sae":  # its "unseen" reference: store documents outside the training groups
        job.texts = {**_store_sample(job.ws, set(job.texts) | job.sets.docs), **job.texts}
    task = UnlearnTask(original.copy(), job.sets, job.queries, job.texts, reference=original,
                       retrain=lambda rows: _retrain(job.ws, job.ref, rows, job.queries, job.texts, job.replaced))
    targets = _relabel_targets(job, task) if method == "relabel" else None
    if method == "relabel" and targets is None:
        if escalate:
            return _exact(job, "retrain", "auto") | {"escalated_from": method, "why_escalated": "relabel: no target"}
        return {"model": str(job.ref), "level": "not_unlearned", "route": method,
                "why": "relabel: no target (no init model of the same kind, and no registered non-member pair "
                       "to measure the gain of training on)"}
    result = _method(job, method).run(task, method_config(method, cfg))
    seconds = time.perf_counter() - t0
    audit = _audit(job, result.scorer, original)
    passed = audit is not None and audit.passed
    if escalate and not passed:
        why = audit.verdict if audit else "no audit reference registered with the model"
        return _exact(job, "retrain", "auto") | {"escalated_from": method, "why_escalated": why,
                                                 "first_audit": audit.to_dict() if audit else None,
                                                 "first_seconds": round(seconds, 2)}
    new = _register(job, result.scorer, job.sets.remaining, result.method, None)
    extra = {"relabel_targets": targets} if targets else {}
    return {"model": str(job.ref), "new": str(new), "route": method, "method": result.method,
            "level": "unlearned" if passed else "unverified", "requested": "auto" if escalate else method,
            "forget_groups": len(job.sets.forget), "touched_groups": len(job.sets.touched),
            "seconds": round(seconds, 2), "audit": audit.to_dict() if audit else None,
            **({} if audit else {"why": "no audit reference registered with the model (train it again)"}), **extra,
            **({"sae": result.info["sae"]} if "sae" in result.info else {})}


def _method(job: ModelJob, method: str) -> Method:
    """The registered method; ``sae`` reads its features from the model's registered SAE when there is one."""
    instance = get_method(method)
    if method == "sae":
        from lethe.pipelines.sae import load_registered, sae_of

        registered = sae_of(job.ws, job.ref)
        if registered is not None:
            instance.prefit = load_registered(job.ws, registered)
    return instance


def _audit(job: ModelJob, scorer: Scorer, original: Scorer, relearn: bool = True) -> Audit | None:
    """The oracle-free audit of ``scorer`` for this request (None without a registered reference);
    ``relearn=False`` skips the relearning attack (for weights that never saw the data)."""
    ref = _audit_reference(job)
    if ref is None or not job.sets.forget_pairs:
        return None
    probe = _probe(job, ref)
    train = (job.ref.manifest.get("extra", {}) or {}).get("train", {}) or {}
    related = job.sets.retain[:16]

    def attack(model: Scorer) -> Scorer:
        attacked = model.copy()
        epochs = 3 * 16 / max(1, len(related))  # three steps of 16 groups
        train_groups(attacked, related, job.queries, job.texts, epochs=epochs, lr=train.get("lr", 2e-5),
                     batch_size=16, seed=7)
        return attacked

    def before_vectors(model: Scorer, docs: list[str]) -> dict[str, np.ndarray]:
        return _doc_vectors(job, model, docs, str(job.ref))

    def after_vectors(model: Scorer, docs: list[str]) -> dict[str, np.ndarray]:
        job.new_vectors = _doc_vectors(job, model, docs, None)
        return job.new_vectors

    return run_audit(scorer, job.sets.forget_pairs, ref, lambda m, pairs: pair_scores(m, pairs, job.queries, job.texts),
                     lambda m: probe_ndcg(m, probe, job.queries, job.texts, ref.probe_qrels, after_vectors),
                     probe_ndcg(original, probe, job.queries, job.texts, ref.probe_qrels, before_vectors),
                     original=original, relearn=attack if related and relearn else None)


def _doc_vectors(job: ModelJob, scorer: Scorer, docs: list[str], version: str | None) -> dict[str, np.ndarray]:
    """Embeddings of ``docs``: those the workspace cache holds for ``version``, the rest computed."""
    hashes = job.ws.store.hashes(docs)
    cached = job.ws.cache.get_many(version, hashes.values()) if version else {}
    out = {d: cached[hashes[d]] for d in docs if hashes.get(d) in cached}
    missing = [d for d in docs if d not in out]
    if missing:
        out.update(zip(missing, scorer.embed_docs([job.texts[d] for d in missing])))
    return out


def _audit_reference(job: ModelJob) -> AuditReference | None:
    """The registered reference without the request's data, its texts loaded (None when there is none).

    Pairs whose hash is odd calibrate relabel's targets and are left out of the audit (a check must not
    be tuned on its own reference).
    """
    if job.reference is None:
        return None
    ref = job.reference.without(job.plan["doc_ids"], job.plan["query_ids"])
    audit_pairs = [p for p in ref.nonmember_pairs if not _calibration_pair(p)]
    job.queries.update(job.ws.store.query_texts({q for q, _ in ref.nonmember_pairs} | set(ref.probe_qrels)))
    job.texts.update({d.id: d.contents for d in job.ws.store.get_many({d for _, d in ref.nonmember_pairs})})
    audit_pairs = [(q, d) for q, d in audit_pairs if q in job.queries and d in job.texts]
    return AuditReference(audit_pairs, {q: r for q, r in ref.probe_qrels.items() if q in job.queries})


def _calibration_pair(pair: tuple[str, str]) -> bool:
    return shard_of("\t".join(pair), 2) == 1


def _probe(job: ModelJob, ref: AuditReference) -> dict[str, list[str]]:
    """BM25 top-``PROBE_DEPTH`` of each probe query, without the request's documents."""
    qids = sorted(ref.probe_qrels)
    if not qids:
        return {}
    gone = set(job.plan["doc_ids"])
    hits = job.ws.load_index("bm25").search([job.queries[q] for q in qids], PROBE_DEPTH + len(gone))
    run = {q: [h.doc_id for h in hs if h.doc_id not in gone][:PROBE_DEPTH] for q, hs in zip(qids, hits)}
    job.texts.update({d.id: d.contents for d in job.ws.store.get_many({d for c in run.values() for d in c})})
    return {q: [d for d in c if d in job.texts] for q, c in run.items()}


def probe_ndcg(scorer: Scorer, run: dict[str, list[str]], queries: dict[str, str], texts: dict[str, str],
               qrels: dict[str, dict[str, int]],
               doc_vectors: Callable[[Scorer, list[str]], dict[str, np.ndarray]] | None = None) -> float:
    """nDCG@10 of ``run`` (query -> candidates) re-scored by ``scorer`` (NaN without a query); a
    bi-encoder embeds each document once (``doc_vectors``: where its vectors come from)."""
    from lethe.pipelines.evaluate import evaluate

    pairs = [(q, d) for q, cands in run.items() for d in cands]
    if not pairs:
        return float("nan")
    if isinstance(scorer, BiEncoderScorer):  # each document embedded once, not once per pair
        docs = sorted({d for _, d in pairs})
        qids = sorted(run)
        emb_d = doc_vectors(scorer, docs) if doc_vectors else dict(zip(docs, scorer.embed_docs([texts[d]
                                                                                                  for d in docs])))
        emb_q = dict(zip(qids, scorer.embed_docs([f"{scorer.query_prompt or ''}{queries[q]}" for q in qids])))
        s = np.array([float(emb_q[q] @ emb_d[d]) for q, d in pairs])
    else:
        s = pair_scores(scorer, pairs, queries, texts)
    scored: dict[str, dict[str, float]] = {}
    for (q, d), v in zip(pairs, s):
        scored.setdefault(q, {})[d] = float(v)
    return evaluate(scored, {q: qrels[q] for q in scored}, ["nDCG@10"])[0]["nDCG@10"]


def _load_shards(job: ModelJob) -> ShardedModel:
    """The model's shards over its init model, with its own recipe (texts loaded for every shard)."""
    from lethe.unlearning.sharded import ShardedModel

    folder = job.ws.registry.resolve_path(job.ref) / SHARDS_DIR
    base = _init_scorer(job)
    probe = ShardedModel.load(folder, base, lambda sc, rows: None)
    _load_rows_texts(job, [e for sh in probe.shards.values() for e in sh.examples])
    probe.recipe = _shard_recipe(job)
    return probe


def _refit_shards(job: ModelJob, old: ShardedModel) -> ShardedModel:
    """Every shard trained again from the init model on the remaining groups (teacher scores re-read
    from the cache's current version): the exact route when a student's teacher changed."""
    from lethe.pipelines.train import train_shards

    rows = _with_current_scores(job, job.sets.remaining)
    data = _owners_of(job, rows)
    return train_shards(_init_scorer(job), _shard_recipe(job), rows, data, old.k)


def _owners_of(job: ModelJob, rows: list[MinedExample]) -> Any:
    """A TrainingData-like holder of owners for shard placement (from the store)."""
    from lethe.pipelines.train import TrainingData

    docs = {d for e in rows for d in (e.positive, *e.negatives)}
    owners = {d.id: d.owners for d in job.ws.store.get_many(docs)}
    owners.update({f"query:{q}": o for q, o in job.ws.store.query_owners({e.query_id for e in rows}).items()})
    return TrainingData(job.queries, {}, job.texts, {}, owners)


def _load_rows_texts(job: ModelJob, rows: list[MinedExample]) -> None:
    missing = {d for e in rows for d in (e.positive, *e.negatives)} - set(job.texts)
    job.texts.update({d.id: d.contents for d in job.ws.store.get_many(missing)})
    job.queries.update(job.ws.store.query_texts({e.query_id for e in rows} - set(job.queries)))


def _init_scorer(job: ModelJob) -> Scorer:
    parents = origin_parents(job.ws, job.ref)
    if "init" not in parents:
        raise ForgetError(f"{job.ref} has no recorded init model to retrain from")
    train = (job.ref.manifest.get("extra", {}) or {}).get("train", {}) or {}
    init = job.ws.registry.get(parents["init"])
    if job.ref.kind == "cross_encoder":
        from lethe.pipelines.train import new_cross_encoder

        model = new_cross_encoder(job.ws, init, train.get("seed", 42), train.get("gate", -6.0),
                                  train.get("listwise", False), train.get("passage_view", "head"))
        return CrossEncoderScorer(model, max_length=train.get("max_length", 192))
    params = job.ref.manifest.get("params", {}) or {}
    return BiEncoderScorer(job.ws.registry.load(init), max_length=train.get("max_length", 256),
                           query_prompt=params.get("query_prompt"))


def _shard_recipe(job: ModelJob):  # noqa: ANN202
    """The model's own recipe and settings from its manifest, at its shards' rate scale."""
    from lethe.embedding.train import EmbedTrainConfig
    from lethe.pipelines.train import bi_encoder_recipe, cross_encoder_recipe
    from lethe.ranking.cross_encoder import CETrainConfig

    extra = job.ref.manifest.get("extra", {}) or {}
    train, scale = dict(extra.get("train", {}) or {}), (job.sharded or {}).get("lr_scale", 1.0)
    if job.ref.kind == "cross_encoder":
        cfg = CETrainConfig.from_dict(train)
        return cross_encoder_recipe(cfg, job.queries, job.texts, scale)
    cfg = EmbedTrainConfig.from_dict(train)
    return bi_encoder_recipe(cfg, job.queries, job.texts, scale)


def sharded_rows(model: ShardedModel) -> list[MinedExample]:
    """Every group the shards hold now (the new version's record)."""
    return [e for s in sorted(model.shards) for e in model.shards[s].examples]


def _with_current_scores(job: ModelJob, rows: list[MinedExample]) -> list[MinedExample]:
    """``rows`` with teacher scores re-read from the current version of the model's cache (if any)."""
    parents = origin_parents(job.ws, job.ref)
    cache = parents.get("cache")
    if cache is None:
        return rows
    scores = load_scores(job.ws, str(job.ws.registry.get(cache.split("@")[0]))).scores  # its active version
    return [MinedExample(e.query_id, e.positive, e.negatives,
                         tuple(scores.get(e.query_id, {}).get(d, t) for d, t in
                               zip((e.positive, *e.negatives), e.teacher))) for e in rows]


def _unlearn_listwise(ws: Workspace, rid: str, ref: ArtifactRef, plan: dict[str, Any], method: str) -> dict[str, Any]:
    """A listwise LLM reranker: relabel its stored lists without the data (``retrain``: exact)."""
    from lethe.pipelines.rerank import read_labels, relabel_listwise

    try:
        read_labels(ws, str(ref))
    except LetheError as exc:
        return {"model": str(ref), "level": "not_unlearned", "why": str(exc)}
    how = "relabel" if method not in ("retrain", "auto", "sharded") else "retrain"
    new, info = relabel_listwise(ws, str(ref), plan["doc_ids"], plan["query_ids"], rid, how)
    return {"model": str(ref), "new": str(new), "method": f"listwise-{how}",
            "level": "exact" if info["exact"] else "unverified", **info}


def _texts(ws: Workspace, sets: Any) -> dict[str, str]:
    ids = {d for e in [*sets.forget, *sets.retain, *sets.remaining] for d in (e.positive, *e.negatives)}
    texts = {d.id: d.contents for d in ws.store.get_many(ids)}
    missing = [d for e in sets.forget for d in (e.positive,) if d not in texts]
    if missing:
        raise ForgetError(f"the text of {missing[0]!r} is gone from the store; model unlearning must run before "
                          "the store step (resume the request; do not delete by hand)")
    return texts


def _queries(ws: Workspace, sets: Any) -> dict[str, str]:
    qids = {e.query_id for e in [*sets.forget, *sets.retain, *sets.remaining]}
    return ws.store.query_texts(qids)


def _relabel_targets(job: ModelJob, task: UnlearnTask) -> str | None:
    """Set relabel's per-pair targets on ``task``: the init model's score plus the gain training gave
    the registered non-member pairs held for calibration (``calibrated_targets``, what the benchmark
    measured); None when there is no init model of the same kind or no such pair."""
    ref = job.reference.without(job.plan["doc_ids"], job.plan["query_ids"]) if job.reference else None
    unseen = [p for p in (ref.nonmember_pairs if ref else []) if _calibration_pair(p)]
    job.queries.update(job.ws.store.query_texts({q for q, _ in unseen} - set(job.queries)))
    job.texts.update({d.id: d.contents for d in job.ws.store.get_many({d for _, d in unseen} - set(job.texts))})
    unseen = [(q, d) for q, d in unseen if q in job.queries and d in job.texts]
    parents = origin_parents(job.ws, job.ref)
    if not unseen or "init" not in parents:
        return None
    init = job.ws.registry.get(parents["init"])
    if init.kind != job.ref.kind:  # e.g. a cross-encoder grown from a bi-encoder: its fresh head scores nothing yet
        return None
    try:
        base = scorer_of(job.ws, init)
    except (LetheError, OSError):  # the init model cannot be loaded here (a hub model, offline)
        return None
    task.pair_targets, _ = calibrated_targets(base, task.reference, task.sets.forget_pairs, unseen,
                                              task.queries, task.texts)
    return "calibrated"


def _retrain(ws: Workspace, ref: ArtifactRef, rows: list, queries: dict[str, str], texts: dict[str, str],
             replaced: dict[str, str] | None = None) -> Scorer:
    """The oracle: the model's own recipe and seeds (from its manifest), from its init model, on ``rows``.

    A student's teacher scores come from the cache's version as of now (re-scored by an unlearned
    teacher when the teacher was replaced earlier in this request).
    """
    from lethe.embedding.train import EmbedTrainConfig
    from lethe.pipelines.train import fit_bi_encoder, keyed_groups
    from lethe.ranking.cross_encoder import CETrainConfig, train_cross_encoder

    parents = origin_parents(ws, ref)
    if "init" not in parents:
        raise ForgetError(f"{ref} has no recorded init model to retrain from")
    init = ws.registry.get(parents["init"])
    train = dict((ref.manifest.get("extra", {}) or {}).get("train", {}) or {})
    queries.update(ws.store.query_texts({e.query_id for e in rows} - set(queries)))
    texts.update({d.id: d.contents for d in ws.store.get_many({d for e in rows for d in (e.positive, *e.negatives)})})
    train.pop("max_seconds", None)  # the oracle runs the whole recipe
    cache = parents.get("cache")
    if cache is not None:  # a distilled model: its teacher's scores as of now
        scores = load_scores(ws, str(ws.registry.get(cache.split("@")[0]))).scores  # its active version
        rows = [MinedExample(e.query_id, e.positive, e.negatives,
                             tuple(scores.get(e.query_id, {}).get(d, t) for d, t in
                                   zip((e.positive, *e.negatives), e.teacher))) for e in rows]
    if ref.kind == "cross_encoder":
        from lethe.pipelines.train import new_cross_encoder

        cfg = CETrainConfig.from_dict(train)
        # the same head as the original (grown from a bi-encoder: the gated segment-cosine or one-pass list head)
        model = new_cross_encoder(ws, init, cfg.seed, cfg.gate, cfg.listwise, cfg.passage_view)
        train_cross_encoder(model, keyed_groups(rows, queries, texts), cfg)
        return CrossEncoderScorer(model, max_length=cfg.max_length)
    model = ws.registry.load(init)
    cfg = EmbedTrainConfig.from_dict(train)
    fit_bi_encoder(model, rows, queries, texts, cfg)
    return BiEncoderScorer(model, max_length=cfg.max_length, query_prompt=(ref.manifest.get("params") or {}).get(
        "query_prompt"))


def _register(job: ModelJob, scorer: Scorer, rows: list[MinedExample] | None, method: str,
              sharded: ShardedModel | None) -> ArtifactRef:
    """The new version: weights, the groups it holds now, its reference without the data, its shards."""
    plan = job.plan
    without = Lineage(doc_ids=plan["doc_ids"], owner_ids=[*plan["request_owners"], *plan.get("source_owners", [])],
                      query_ids=plan["query_ids"])
    reference = job.reference.without(plan["doc_ids"], plan["query_ids"]) if job.reference else None
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(scorer, CrossEncoderScorer):
            scorer.model.save_pretrained(tmp)
        else:
            scorer.model.save(tmp)
        write_training_record(Path(tmp), rows, reference, sharded)
        extra = {"unlearning": {"method": method, "request": job.rid}}
        new = job.ws.registry.derive(job.ref, payload_dir=Path(tmp), relation="unlearned_from",
                                     forget_request=job.rid, without=without, extra=extra,
                                     params=job.ref.manifest.get("params"))
    if job.new_vectors and isinstance(scorer, BiEncoderScorer):
        hashes = job.ws.store.hashes(job.new_vectors)
        kept = [d for d in job.new_vectors if d in hashes]
        job.ws.cache.put_many(str(new), [hashes[d] for d in kept], np.stack([job.new_vectors[d] for d in kept]))
    return new


def _unlearn_cache(ws: Workspace, rid: str, ref: ArtifactRef, plan: dict[str, Any],
                   replaced: dict[str, str]) -> dict[str, Any]:
    scores = load_scores(ws, str(ref))
    gone_q = set(plan["query_ids"])
    kept = TeacherScores({q: s for q, s in scores.without(set(plan["doc_ids"])).scores.items() if q not in gone_q},
                         scores.teacher)
    teacher = scores.teacher.split("@")[0] if scores.teacher else None
    rescored_by = None
    new_teacher = next((v for k, v in replaced.items() if k.split("@")[0] == teacher), None)
    if new_teacher:  # the teacher was unlearned in this request: its old scores must not be distilled again
        kept = _rescore(ws, kept, new_teacher)
        rescored_by = new_teacher
    without = Lineage(doc_ids=plan["doc_ids"], owner_ids=[*plan["request_owners"], *plan.get("source_owners", [])],
                      query_ids=plan["query_ids"])
    with tempfile.TemporaryDirectory() as tmp:
        kept.save(Path(tmp) / "scores.json")
        extra = {**(ref.manifest.get("extra", {}) or {}), "teacher": rescored_by or scores.teacher,
                 "unlearning": {"method": "drop+rescore" if rescored_by else "drop", "request": rid}}
        new = ws.registry.derive(ref, payload_dir=Path(tmp), relation="unlearned_from", forget_request=rid,
                                 without=without, extra=extra, params=ref.manifest.get("params"))
    return {"model": str(ref), "new": str(new), "method": "drop+rescore" if rescored_by else "drop",
            "level": "exact", "rescored_by": rescored_by}


def _rescore(ws: Workspace, scores: TeacherScores, teacher: str) -> TeacherScores:
    from lethe.pipelines.train import teacher_reranker

    rr = teacher_reranker(ws, teacher)
    queries = ws.store.query_texts(set(scores.scores))
    texts = {d.id: d.contents for d in ws.store.get_many(scores.doc_ids())}
    pools = {q: [d for d in per if d in texts] for q, per in scores.scores.items() if q in queries}
    fresh = TeacherScores.compute(pools, {}, queries, texts, rr.score_pairs, teacher=rr.version)
    return fresh


def reindex_for(ws: Workspace, rid: str, old_encoder: str, new_encoder: str) -> dict[str, str]:
    """Re-embed every dense index built with ``old_encoder`` using ``new_encoder`` (a new index named
    after the new version), retire the old index and delete its file and cached vectors."""
    done = {}
    new_ref = ws.registry.get(new_encoder)
    for info in ws.indexes():
        params = info.ref.manifest.get("params", {}) or {}
        if params.get("encoder_version") != old_encoder:
            continue
        name = f"dense-{new_ref.name}-v{new_ref.version}"
        ws.build_dense(name, encoder=str(new_ref), kind=params.get("kind", "flat"))
        ws.registry.retire(info.ref, request_id=rid)
        Path(info.path).unlink(missing_ok=True)
        done[info.ref.name] = name
    ws.cache.purge_model(old_encoder)
    return done


def summary(steps: list[dict[str, Any]]) -> str:
    """One line for the receipt's ``model_level``: ``exact``, ``unlearned`` (every approximate step
    passed its audit) or what fell short."""
    levels = [s.get("level") for s in steps]
    if not steps:
        return "no model saw the data"
    if all(lv in ("exact", "unchanged") for lv in levels):
        return "exact"
    if all(lv in ("exact", "unchanged", "unlearned") for lv in levels):
        return "unlearned"
    return "not reached (" + json.dumps({s["model"]: s.get("level") for s in steps}) + ")"
