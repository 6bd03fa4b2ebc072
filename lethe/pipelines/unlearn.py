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
from pathlib import Path
from typing import Any

import numpy as np

from lethe.embedding.pools import MinedExample, TeacherScores, save_examples
from lethe.errors import ForgetError, LetheError
from lethe.pipelines.train import EXAMPLES_FILE, load_scores, read_examples
from lethe.pipelines.workspace import Workspace
from lethe.registry import ArtifactRef, Lineage
from lethe.unlearning.methods import UnlearnConfig, UnlearnTask, calibrated_targets, get_method
from lethe.unlearning.scorers import BiEncoderScorer, CrossEncoderScorer, Scorer, pair_scores
from lethe.unlearning.sets import split_examples

EXACT = ("retrain",)
#: methods that produce a plain model of the same kind (``sharded`` needs a shard-trained model and
#: ``uld`` serves two models, so neither replaces a registry version here)
PIPELINE_METHODS = ("retrain", "grad_ascent", "grad_diff", "npo", "pdu", "relabel", "reglu", "fit")


def scorer_of(ws: Workspace, ref: ArtifactRef) -> Scorer:
    """The registry model as a differentiable scorer."""
    model = ws.registry.load(ref)
    params = ref.manifest.get("params", {}) or {}
    if ref.kind == "cross_encoder":
        return CrossEncoderScorer(model, max_length=params.get("max_length", 192))
    train = (ref.manifest.get("extra", {}) or {}).get("train", {}) or {}
    return BiEncoderScorer(model, max_length=train.get("max_length", 256), query_prompt=params.get("query_prompt"))


def unlearn_model(ws: Workspace, rid: str, model: str, plan: dict[str, Any], method: str,
                  cfg: UnlearnConfig | None = None, replaced: dict[str, str] | None = None) -> dict[str, Any]:
    """One journaled model step; returns what it did (new version, level, figures)."""
    ref = ws.registry.get(model)
    if ref.kind == "cache":
        return _unlearn_cache(ws, rid, ref, plan, replaced or {})
    if ref.kind in ("adapter", "llm"):
        return _unlearn_listwise(ws, rid, ref, plan, method)
    if ref.kind not in ("cross_encoder", "bi_encoder"):
        return {"model": model, "level": "not_unlearned", "why": f"no unlearning path for kind {ref.kind}"}
    try:
        examples = read_examples(ws, model)
    except LetheError as exc:
        return {"model": model, "level": "not_unlearned", "why": str(exc)}
    sets = split_examples(examples, plan["doc_ids"], plan["query_ids"])
    if not sets.forget and not sets.touched:
        return {"model": model, "level": "unchanged", "why": "its training groups never used the data"}
    if not sets.forget and method != "retrain":
        return {"model": model, "level": "not_unlearned", "touched_groups": len(sets.touched),
                "why": "the data was only a negative in its groups; only retrain removes that influence"}
    texts = _texts(ws, sets)
    queries = _queries(ws, sets)
    original = scorer_of(ws, ref)
    task = UnlearnTask(original.copy(), sets, queries, texts, reference=original,
                       retrain=lambda rows: _retrain(ws, ref, rows, queries, texts, replaced))
    targets = _relabel_targets(ws, task, ref) if method == "relabel" else None
    if method == "relabel" and targets is None:
        return {"model": model, "level": "not_unlearned",
                "why": "relabel: no target (no init model of the same kind, and no candidate the model never "
                       "saw to measure m_unseen on)"}
    result = get_method(method).run(task, cfg or UnlearnConfig()) if sets.forget else get_method(
        "retrain").run(task)
    method_used = result.method
    extra = {"relabel_targets": targets} if targets else {}
    before = pair_scores(original, sets.forget_pairs, queries, texts) if sets.forget else np.zeros(0)
    scorer = result.scorer
    after = pair_scores(scorer, sets.forget_pairs, queries, texts) if sets.forget else np.zeros(0)
    new = _register(ws, rid, ref, scorer, sets, method_used, plan)
    return {"model": model, "new": str(new), "method": method_used,
            "level": "exact" if result.exact and method_used in EXACT else "approximate",
            "forget_groups": len(sets.forget), "touched_groups": len(sets.touched),
            "seconds": round(result.seconds, 2),
            "forget_score_mean_before": float(before.mean()) if len(before) else None,
            "forget_score_mean_after": float(after.mean()) if len(after) else None, **extra}


def _unlearn_listwise(ws: Workspace, rid: str, ref: ArtifactRef, plan: dict[str, Any], method: str) -> dict[str, Any]:
    """A listwise LLM reranker: relabel its stored lists without the data (``retrain``: exact)."""
    from lethe.pipelines.rerank import read_labels, relabel_listwise

    try:
        read_labels(ws, str(ref))
    except LetheError as exc:
        return {"model": str(ref), "level": "not_unlearned", "why": str(exc)}
    how = "retrain" if method == "retrain" else "relabel"
    new, info = relabel_listwise(ws, str(ref), plan["doc_ids"], plan["query_ids"], rid, how)
    return {"model": str(ref), "new": str(new), "method": f"listwise-{how}",
            "level": "exact" if info["exact"] else "approximate", **info}


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


def _relabel_targets(ws: Workspace, task: UnlearnTask, ref: ArtifactRef) -> str | None:
    """Set relabel's targets on ``task``; returns which kind, or None when there is none to set.

    Per pair from the init model when it is of the same kind (``calibrated_targets``; the gain of
    training is measured on the unseen pairs below, taken as 0 when there are none), else one level,
    ``m_unseen``.
    """
    unseen, best = _unseen_pairs(ws, task.reference, task.sets, task.queries, task.texts, ref)
    task.unseen_target = float(np.mean(best)) if best else float("nan")
    fallback = "m_unseen" if best else None
    parents = {rel: str(p) for rel, p in ws.registry.parents_of(ref)}
    if "init" not in parents:
        return fallback
    init = ws.registry.get(parents["init"])
    if init.kind != ref.kind:  # e.g. a cross-encoder grown from a bi-encoder: its fresh head scores nothing yet
        return fallback
    try:
        base = scorer_of(ws, init)
    except (LetheError, OSError):  # the init model cannot be loaded here (a hub model, offline): one level
        return fallback
    if unseen:
        task.pair_targets, _ = calibrated_targets(base, task.reference, task.sets.forget_pairs, unseen,
                                                  task.queries, task.texts)
        return "calibrated"
    before = pair_scores(base, task.sets.forget_pairs, task.queries, task.texts)
    task.pair_targets = {p: float(v) for p, v in zip(task.sets.forget_pairs, before)}
    return "calibrated (gain not measured: no unseen candidate; taken as 0)"


def _unseen_pairs(ws: Workspace, scorer: Scorer, sets: Any, queries: dict[str, str], texts: dict[str, str],
                  ref: ArtifactRef) -> tuple[list[tuple[str, str]], list[float]]:
    """For each forget query, the BM25 candidate the model never saw that it scores best, and that score
    (their mean is ``m_unseen``: what the original gives relevant-looking documents it never saw)."""
    seen = set(ws.registry.lineage_of(ref).doc_ids) | set(sets.docs)
    qids = sorted({e.query_id for e in sets.forget})
    hits = ws.load_index("bm25").search([queries[q] for q in qids], 20)
    pairs = [(q, h.doc_id) for q, hs in zip(qids, hits) for h in hs if h.doc_id not in seen]
    if not pairs:
        return [], []
    texts.update({d.id: d.contents for d in ws.store.get_many({d for _, d in pairs})})
    s = pair_scores(scorer, pairs, queries, texts)
    best: dict[str, tuple[float, str]] = {}
    for (q, d), v in zip(pairs, s):
        if q not in best or float(v) > best[q][0]:
            best[q] = (float(v), d)
    return [(q, d) for q, (_, d) in best.items()], [v for v, _ in best.values()]


def _retrain(ws: Workspace, ref: ArtifactRef, rows: list, queries: dict[str, str], texts: dict[str, str],
             replaced: dict[str, str] | None = None) -> Scorer:
    """The oracle: the model's own recipe and seeds (from its manifest), from its init model, on ``rows``.

    A student's teacher scores come from the cache's version as of now (re-scored by an unlearned
    teacher when the teacher was replaced earlier in this request).
    """
    from lethe.embedding.train import EmbedTrainConfig, train_bi_encoder
    from lethe.ranking.cross_encoder import CETrainConfig, Group, train_cross_encoder

    parents = {rel: str(p) for rel, p in ws.registry.parents_of(ref)}
    if "init" not in parents:
        raise ForgetError(f"{ref} has no recorded init model to retrain from")
    init = ws.registry.get(parents["init"])
    train = dict((ref.manifest.get("extra", {}) or {}).get("train", {}) or {})
    queries.update(ws.store.query_texts({e.query_id for e in rows} - set(queries)))
    texts.update({d.id: d.contents for d in ws.store.get_many({d for e in rows for d in (e.positive, *e.negatives)})})
    train.pop("max_seconds", None)  # the oracle runs the whole recipe
    if ref.kind == "cross_encoder":
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(ws.registry.resolve_path(init)), num_labels=1, device="cpu")
        cfg = CETrainConfig(**{k: v for k, v in train.items() if k in CETrainConfig.__dataclass_fields__})
        groups = [Group(queries[e.query_id], texts[e.positive], [texts[d] for d in e.negatives]) for e in rows]
        train_cross_encoder(model, groups, cfg)
        return CrossEncoderScorer(model, max_length=cfg.max_length)
    model = ws.registry.load(init)
    cfg = EmbedTrainConfig(**{k: v for k, v in train.items() if k in EmbedTrainConfig.__dataclass_fields__})
    cache = parents.get("cache")
    if cache is not None:
        current = (replaced or {}).get(cache, cache)
        scores = load_scores(ws, current).scores
        rows = [MinedExample(e.query_id, e.positive, e.negatives,
                             tuple(scores.get(e.query_id, {}).get(d, t) for d, t in
                                   zip((e.positive, *e.negatives), e.teacher))) for e in rows]
    train_bi_encoder(model, rows, queries, texts, cfg)
    return BiEncoderScorer(model, max_length=cfg.max_length, query_prompt=(ref.manifest.get("params") or {}).get(
        "query_prompt"))


def _register(ws: Workspace, rid: str, ref: ArtifactRef, scorer: Scorer, sets: Any, method: str,
              plan: dict[str, Any]) -> ArtifactRef:
    without = Lineage(doc_ids=plan["doc_ids"], owner_ids=plan["request_owners"], query_ids=plan["query_ids"])
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(scorer, CrossEncoderScorer):
            scorer.model.save_pretrained(tmp)
        else:
            scorer.model.save(tmp)
        save_examples(Path(tmp) / EXAMPLES_FILE, sets.remaining)
        return ws.registry.derive(ref, payload_dir=Path(tmp), relation="unlearned_from", forget_request=rid,
                                  without=without, extra={"unlearning": {"method": method, "request": rid}},
                                  params=ref.manifest.get("params"))


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
    without = Lineage(doc_ids=plan["doc_ids"], owner_ids=plan["request_owners"], query_ids=plan["query_ids"])
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
    """One line for the receipt's ``model_level``."""
    levels = [s.get("level") for s in steps]
    if not steps:
        return "no model saw the data"
    if all(lv in ("exact", "unchanged") for lv in levels):
        return "exact"
    return "approximate (" + json.dumps({s["model"]: s.get("level") for s in steps}) + ")"
