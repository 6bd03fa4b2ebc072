"""Index-level forgetting: validate, plan from lineage, execute journaled steps, verify, write a receipt.

``forget(ws, request)`` holds the workspace's writer lock from start to end, so two requests never
interleave. It first checks the request (every id and owner exists, or was forgotten earlier) and
writes nothing if it does not hold; then it records the request as pending, removes the documents
(or every document of the owners) from the store, every index that holds them (found through
``registry.affected_by``) and the embedding cache, verifies, turns the ids still written in what
stays (lineage and records of models not replaced, manifests) into keyed hashes and checkpoints every
database (:mod:`lethe.pipelines.scrub`), and appends a hash-chained receipt.
Each step is journaled: after a crash, :func:`resume` finishes pending requests without redoing
finished steps. A step that raises marks the request ``failed`` in the ledger (with its reason);
:func:`retry` continues a failed request from its journal, or runs an incomplete one again,
recovering its ids from the keyed hashes the ledger holds. Replaying a completed request is a
no-op. The level reported is never higher than what was checked: ``deleted`` needs every index
check to pass; models trained on the data are listed as still remembering it unless weight
unlearning ran.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from lethe.errors import ForgetError, LedgerError
from lethe.pipelines.doc2query import source_owner
from lethe.pipelines.scrub import hashed_forms, scrub_request, trace_report
from lethe.pipelines.workspace import OWN_TEXT_PROBES, IndexInfo, Workspace
from lethe.retrieval.bm25 import BM25Index
from lethe.retrieval.dense import DenseIndex
from lethe.store.redact import HASHED
from lethe.types import ForgetRequest
from lethe.unlearning.base import UnlearnConfig

#: at most this many unknown ids are named in an error message
SHOWN = 10


class InjectedCrash(RuntimeError):
    """Raised by the ``crash_after`` test hook to simulate a crash after a step."""


@dataclass
class ForgetReport:
    """What a forget call did. ``reached`` is True only when the requested level was reached."""

    request_id: str
    level: str
    noop: bool = False
    receipt: dict[str, Any] = field(default_factory=dict)
    steps_run: list[str] = field(default_factory=list)
    chain_head: str = ""
    note: str = ""

    @property
    def reached(self) -> bool:
        """``deleted`` everywhere, and every affected model handled when unlearning was asked for."""
        if self.level != "deleted":
            return False
        r = self.receipt
        return not (r.get("unlearn_requested") and r.get("models_still_trained_on_data"))


@dataclass(frozen=True)
class RecoveredRequest:
    """A request rebuilt from the ledger's keyed hashes (for a retry); may match nothing any more."""

    doc_ids: tuple[str, ...]
    owners: tuple[str, ...]
    reason: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    #: the hashed forms (``h:<hash>``) of every id it named, by lineage field: models that were not
    #: replaced keep only those in their lineage after an earlier run's ``scrub`` step
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class Checked:
    """A request's ids sorted into known (present somewhere), forgotten earlier, and unknown."""

    docs: list[str]
    owners: list[str]
    already: int
    unknown_docs: list[str]
    unknown_owners: list[str]
    labels: list[tuple[str, str]] = field(default_factory=list)
    unknown_labels: list[tuple[str, str]] = field(default_factory=list)


def check_request(ws: Workspace, request: ForgetRequest) -> Checked:
    """Sort the request's ids (a ``ForgetRequest`` is never empty). Writes nothing."""
    held = _ids_anywhere(ws, request.doc_ids)
    gone_docs, gone_owners = ws.ledger.forgotten_hashes("doc"), ws.ledger.forgotten_hashes("owner")
    docs = [d for d in dict.fromkeys(request.doc_ids) if d in held]
    unknown = [d for d in dict.fromkeys(request.doc_ids) if d not in held and ws.ledger.hash_id(d) not in gone_docs]
    owners = [o for o in dict.fromkeys(request.owners) if _owner_known(ws, o)]
    unknown_owners = [o for o in dict.fromkeys(request.owners)
                      if o not in owners and ws.ledger.hash_id(o, "owner") not in gone_owners]
    labels, unknown_labels, gone_labels = [], [], ws.ledger.forgotten_hashes("label")
    label_docs = _ids_anywhere(ws, tuple(d for _, d in request.labels))
    for pair in dict.fromkeys(request.labels):
        if pair[1] in label_docs:
            labels.append(pair)
        elif ws.ledger.hash_labels([pair])[0] not in gone_labels:
            unknown_labels.append(pair)
    already = (len(set(request.doc_ids)) - len(docs) - len(unknown)
               + len(set(request.owners)) - len(owners) - len(unknown_owners)
               + len(set(request.labels)) - len(labels) - len(unknown_labels))
    return Checked(docs, owners, already, unknown, unknown_owners, labels, unknown_labels)


def _ids_anywhere(ws: Workspace, doc_ids: tuple[str, ...]) -> set[str]:
    """The ids among ``doc_ids`` held by the store, an index, or the lineage of any artifact."""
    ids = set(doc_ids)
    held = {d for d in ids if d in ws.store}
    for info in ws.indexes():
        held |= ids & _ids_of(ws, info)
    rest = sorted(ids - held)
    if rest:
        hashed = dict(zip(hashed_forms(ws, rest, "doc"), rest, strict=True))
        for art in ws.registry.affected_by(doc_ids=[*rest, *hashed]):
            seen = set(ws.registry.lineage_of(art).doc_ids)
            held |= (ids & seen) | {hashed[h] for h in seen & hashed.keys()}
    return held


def _owner_known(ws: Workspace, owner: str) -> bool:
    if ws.store.docs_of_owner(owner) or ws.store.queries_of_owner(owner):
        return True
    return bool(ws.registry.affected_by(owner_ids=[owner, *hashed_forms(ws, [owner], "owner")]))


def _refuse_unknown(checked: Checked, skip_unknown: bool) -> None:
    if skip_unknown or not (checked.unknown_docs or checked.unknown_owners or checked.unknown_labels):
        return
    parts = []
    if checked.unknown_labels:
        parts.append(f"{len(checked.unknown_labels)} label(s) whose document is unknown: "
                     f"{checked.unknown_labels[:SHOWN]}")
    if checked.unknown_docs:
        parts.append(f"{len(checked.unknown_docs)} unknown doc id(s): {checked.unknown_docs[:SHOWN]}")
    if checked.unknown_owners:
        parts.append(f"{len(checked.unknown_owners)} unknown owner(s): {checked.unknown_owners[:SHOWN]}")
    raise ForgetError("; ".join(parts) + " (in no store, index or model of this workspace, and never forgotten "
                      "here); nothing was changed. Correct the ids, or pass --skip-unknown to forget the others "
                      "and list these in the receipt as not found")


def _check_method(unlearn: str | None) -> None:
    if unlearn is None:
        return
    from lethe.pipelines.unlearn import PIPELINE_METHODS

    if unlearn not in PIPELINE_METHODS:
        raise ForgetError(f"--unlearn {unlearn!r} cannot replace registry models here; choose one of "
                          f"{', '.join(PIPELINE_METHODS)}")


def forget(ws: Workspace, request: ForgetRequest, crash_after: str | None = None,
           unlearn: str | None = None, unlearn_cfg: UnlearnConfig | None = None,
           skip_unknown: bool = False) -> ForgetReport:
    """Forget ``request`` everywhere in the workspace (see module docs).

    ``unlearn`` names a weight-unlearning method (``lethe.unlearning``) to run on every model that
    saw the data; without it models are only listed as still trained on the data. Unknown ids are
    an error (nothing written) unless ``skip_unknown``, which lists them in the receipt as not found.
    """
    _check_method(unlearn)
    with ws.writing():
        ws.ledger.clear_stale_journals()
        rid = ws.ledger.request_id(request.doc_ids, request.owners, request.labels)
        state = ws.ledger.state(rid)
        if state is not None and state.kind == "receipt":
            return ForgetReport(rid, state.payload["level"], noop=True, receipt=state.payload,
                                chain_head=state.entry_hash)
        if state is None or state.kind != "pending":
            checked = check_request(ws, request)
            _refuse_unknown(checked, skip_unknown)
            if not checked.docs and not checked.owners and not checked.labels:
                return ForgetReport(rid, "deleted", noop=True, note="every id was forgotten by an earlier request")
            _record_pending(ws, rid, request, checked, unlearn)
            _crash_point("pending", crash_after)
        return _run_recorded(ws, rid, request, crash_after, unlearn, unlearn_cfg)


def _record_pending(ws: Workspace, rid: str, request: ForgetRequest, checked: Checked | None,
                    unlearn: str | None, retry: bool = False) -> None:
    payload: dict[str, Any] = {
        "doc_hashes": ws.ledger.hash_ids(request.doc_ids),
        "owner_hashes": ws.ledger.hash_ids(request.owners, "owner"),
        "reason": request.reason, "unlearn": unlearn}
    if request.labels:
        payload["label_hashes"] = ws.ledger.hash_labels(request.labels)
    if checked is not None:
        payload["not_found_hashes"] = ws.ledger.hash_ids(checked.unknown_docs) + ws.ledger.hash_ids(
            checked.unknown_owners, "owner")
        payload["already_forgotten"] = checked.already
    if retry:
        payload["retry"] = True
    ws.ledger.append(rid, "pending", payload)


def resume(ws: Workspace, crash_after: str | None = None,
           unlearn_cfg: UnlearnConfig | None = None) -> list[ForgetReport]:
    """Finish every pending request (after a crash); finished steps are not redone. Failed requests
    are skipped (see :func:`retry`)."""
    reports = []
    with ws.writing():
        ws.ledger.clear_stale_journals()
        for rid in ws.ledger.pending_requests():
            reports.append(_resume_one(ws, rid, crash_after, unlearn_cfg))
    return reports


def _resume_one(ws: Workspace, rid: str, crash_after: str | None, unlearn_cfg: UnlearnConfig | None) -> ForgetReport:
    plan = ws.ledger.step_done(rid, "resolve")
    pending = ws.ledger.state(rid)
    unlearn = pending.payload.get("unlearn") if pending else None
    if plan is None:
        req = _recover(ws, rid)  # crashed before resolving: its ids come back from the keyed hashes
    else:
        req = ForgetRequest(tuple(plan["request_docs"]), tuple(plan["request_owners"]), plan["reason"],
                            tuple(tuple(p) for p in plan.get("labels", [])))
        unlearn = plan.get("unlearn", unlearn)
    return _run_recorded(ws, rid, req, crash_after, unlearn, unlearn_cfg)


def retry(ws: Workspace, rid: str, crash_after: str | None = None,
          unlearn_cfg: UnlearnConfig | None = None) -> ForgetReport:
    """Run a failed or incomplete request again (or finish a pending one), to the level it asked for."""
    with ws.writing():
        ws.ledger.clear_stale_journals()
        state = ws.ledger.state(rid)
        if state is None:
            raise ForgetError(f"no request {rid!r} in the ledger of {ws.home} (`lethe verify` lists the requests)")
        if state.kind == "pending":
            return _resume_one(ws, rid, crash_after, unlearn_cfg)
        if state.kind == "receipt":
            done = ForgetReport(rid, state.payload["level"], noop=True, receipt=state.payload,
                                chain_head=state.entry_hash)
            if done.reached:
                return done
        first = next(e for e in ws.ledger.entries(rid) if e.kind == "pending")
        _record_pending(ws, rid, _recover(ws, rid), None, first.payload.get("unlearn"), retry=True)
        return _resume_one(ws, rid, crash_after, unlearn_cfg)  # a failed request's journal is still there


def _recover(ws: Workspace, rid: str) -> RecoveredRequest:
    """The ids of a request, found again by matching its keyed hashes against what the workspace holds."""
    first = next(e for e in ws.ledger.entries(rid) if e.kind == "pending")
    want_docs, want_owners = set(first.payload["doc_hashes"]), set(first.payload["owner_hashes"])
    receipt = ws.ledger.receipt(rid)  # an incomplete request's receipt names every document it resolved to
    want_docs |= set(receipt.payload.get("doc_hashes", [])) if receipt else set()
    docs = sorted(d for d in _held_ids(ws) if ws.ledger.hash_id(d) in want_docs)
    owners = sorted(o for o in ws.store.owners() if ws.ledger.hash_id(o, "owner") in want_owners)
    queries = receipt.payload.get("query_hashes", []) if receipt else []
    keys = {name: tuple(sorted(HASHED + h for h in hashes))
            for name, hashes in (("doc_ids", want_docs), ("owner_ids", want_owners), ("query_ids", queries))}
    labels = _recover_labels(ws, set(first.payload.get("label_hashes", [])))
    return RecoveredRequest(tuple(docs), tuple(owners), first.payload.get("reason", ""), labels, keys)


def _recover_labels(ws: Workspace, hashes: set[str]) -> tuple[tuple[str, str], ...]:
    """The labels whose keyed hash is in ``hashes``, found in the recorded training groups of active models."""
    if not hashes:
        return ()
    return tuple(sorted(p for p in trained_labels(ws) if ws.ledger.hash_labels([p])[0] in hashes))


def trained_labels(ws: Workspace) -> set[tuple[str, str]]:
    """Every (query id, positive id) pair in the recorded training groups of the active models."""
    from lethe.errors import LetheError
    from lethe.pipelines.train import read_examples

    pairs: set[tuple[str, str]] = set()
    for ref in ws.registry.list("active"):
        if ref.kind in ("bi_encoder", "cross_encoder"):
            try:
                pairs |= {(e.query_id, e.positive) for e in read_examples(ws, str(ref))}
            except LetheError:
                continue
    return pairs


def _step(ws: Workspace, rid: str, name: str, ran: list[str], crash_after: str | None, fn) -> dict:  # noqa: ANN001
    result = ws.ledger.step_done(rid, name)
    if result is None:
        if ws.on_step is not None:
            ws.on_step(name)
        try:
            result = fn() or {}
        except Exception as exc:
            exc.lethe_step = name  # type: ignore[attr-defined]
            raise
        ws.ledger.mark_done(rid, name, result)
        ran.append(name)
    _crash_point(name, crash_after)
    return result


def _crash_point(name: str, crash_after: str | None) -> None:
    """Test hook: after step ``name``, raise :class:`InjectedCrash` or (``kill:STEP``) die by SIGKILL."""
    if crash_after is None:
        return
    kill = crash_after.startswith("kill:")
    if name.startswith(crash_after.removeprefix("kill:")):
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedCrash(f"injected crash after step {name!r}")


def _run_recorded(ws: Workspace, rid: str, request: ForgetRequest | RecoveredRequest, crash_after: str | None,
                  unlearn: str | None, unlearn_cfg: UnlearnConfig | None) -> ForgetReport:
    """Run a pending request; a step that raises marks it failed (with its reason). Its journal stays
    (the data it names is still partly in the workspace) so that :func:`retry` continues where it stopped."""
    try:
        return _run(ws, rid, request, crash_after, unlearn, unlearn_cfg)
    except (InjectedCrash, KeyboardInterrupt):
        raise  # a crash: the request stays pending, `--resume` finishes it
    except Exception as exc:
        step = getattr(exc, "lethe_step", "plan")
        ws.ledger.append(rid, "failed", {"step": step, "error": type(exc).__name__})
        raise ForgetError(f"request {rid} failed at step {step!r}: {exc}. It is marked failed in the ledger; "
                          f"fix the cause and run `lethe forget --retry {rid}`") from exc


def _run(ws: Workspace, rid: str, request: ForgetRequest | RecoveredRequest, crash_after: str | None,
         unlearn: str | None = None, unlearn_cfg: UnlearnConfig | None = None) -> ForgetReport:
    ran: list[str] = []
    plan = _step(ws, rid, "resolve", ran, crash_after, lambda: _resolve(ws, request, unlearn))
    ids, qids = plan["doc_ids"], plan["query_ids"]
    models = _unlearn_models(ws, rid, plan, ran, crash_after, unlearn_cfg) if plan.get("unlearn") else []
    indexes = [i for i in ws.indexes() if i.ref.name in plan["indexes"]]
    _step(ws, rid, "store", ran, crash_after, lambda: {
        "docs_removed": ws.store.delete(ids), "queries_removed": ws.store.delete_queries(qids)})
    removed: dict[str, int] = {}
    for info in indexes:
        res = _step(ws, rid, f"index:{info.ref.name}", ran, crash_after,
                    lambda info=info: _delete_from_index(ws, info, ids))
        removed[info.ref.name] = res.get("removed", 0)
    _step(ws, rid, "cache", ran, crash_after, lambda: {"vectors_purged": ws.cache.purge(plan["hashes"])})
    reindexed = _finish_models(ws, rid, models, ran, crash_after)
    names = set(plan["indexes"]) | set(reindexed.values())
    indexes = [i for i in ws.indexes() if i.ref.name in names]
    checks = _step(ws, rid, "verify", ran, crash_after, lambda: verify_request(ws, plan, indexes, rid))
    _step(ws, rid, "scrub", ran, crash_after, lambda: scrub_request(
        ws, ids, [*plan["request_owners"], *plan.get("source_owners", [])], qids))
    receipt = _receipt(ws, rid, request, plan, removed, checks, models, reindexed)
    entry = ws.ledger.append(rid, "receipt", receipt)
    _crash_point("receipt", crash_after)
    ws.ledger.clear_journal(rid)
    return ForgetReport(rid, receipt["level"], receipt=receipt, steps_run=ran + ["receipt"],
                        chain_head=entry.entry_hash)


def _unlearn_models(ws: Workspace, rid: str, plan: dict[str, Any], ran: list[str], crash_after: str | None,
                    cfg: UnlearnConfig | None) -> list[dict[str, Any]]:
    """One journaled step per affected model, parents first, before the store step (texts still there)."""
    from lethe.pipelines.unlearn import unlearn_model

    replaced: dict[str, str] = {}
    out = []
    for model in plan["models"]:
        res = _step(ws, rid, f"model:{model}", ran, crash_after,
                    lambda m=model: _forgotten_before(ws, m, plan)
                    or unlearn_model(ws, rid, m, plan, plan["unlearn"], cfg, dict(replaced)))
        if res.get("new"):
            replaced[res["model"]] = res["new"]
        out.append(res)
    return out


def _forgotten_before(ws: Workspace, model: str, plan: dict[str, Any]) -> dict[str, Any] | None:
    """A model whose lineage names some of the request's ids only by their keyed hash (an earlier
    request forgot them without replacing it, and their texts are gone): it cannot be unlearned of
    them here, and stays listed as still trained on the data."""
    lineage = ws.registry.lineage_of(model)
    keys = plan.get("lineage_keys", {})
    if not any(set(keys.get(f, ())) & set(getattr(lineage, f)) for f in ("doc_ids", "owner_ids", "query_ids")):
        return None
    return {"model": model, "level": "not_unlearned",
            "why": "an earlier request forgot some of this data without unlearning this model; its texts are "
                   "gone from the store, so it cannot be unlearned of them here (retrain it from the data kept)"}


def _finish_models(ws: Workspace, rid: str, models: list[dict[str, Any]], ran: list[str],
                   crash_after: str | None) -> dict[str, str]:
    """Re-embed the dense indexes of replaced encoders, then retire (destroy) every replaced version."""
    from lethe.pipelines.unlearn import reindex_for

    reindexed: dict[str, str] = {}
    for res in models:
        if res.get("new") and ws.registry.get(res["new"]).kind == "bi_encoder":
            done = _step(ws, rid, f"reindex:{res['model']}", ran, crash_after,
                         lambda r=res: reindex_for(ws, rid, r["model"], r["new"]))
            reindexed.update(done)
    olds = [r["model"] for r in models if r.get("new")]
    if olds:
        _step(ws, rid, "retire", ran, crash_after,
              lambda: {"retired": [_retire(ws, m, rid) for m in olds]})
    return reindexed


def _retire(ws: Workspace, model: str, rid: str) -> str:
    """Destroy a replaced version's weights and drop the vectors cached under it."""
    ws.cache.purge_model(model)
    return str(ws.registry.retire(model, request_id=rid))


def _resolve(ws: Workspace, request: ForgetRequest | RecoveredRequest, unlearn: str | None = None) -> dict[str, Any]:
    owned = [d for o in request.owners for d in ws.store.docs_of_owner(o)]
    held = _ids_anywhere(ws, tuple(dict.fromkeys([*request.doc_ids, *owned])))
    ids = [d for d in dict.fromkeys([*request.doc_ids, *owned]) if d in held]  # unknown ids are never "deleted"
    sources = [source_owner(d) for d in ids]  # queries written from a forgotten document (doc2query) go with it
    qids = sorted({q for o in [*request.owners, *sources] for q in ws.store.queries_of_owner(o)})
    holders = [i for i in ws.indexes() if any(d in _ids_of(ws, i) for d in ids)]
    keys = _lineage_keys(ws, request, ids, qids)
    affected = ws.registry.affected_by(doc_ids=[*ids, *keys["doc_ids"]], owner_ids=[*request.owners,
                                       *keys["owner_ids"]], query_ids=[*qids, *keys["query_ids"]])
    if request.labels:  # one lineage query again, so parents still come before children
        by_label = _label_models(ws, request.labels) | {str(a) for a in affected}
        affected = [a for a in ws.registry.affected_by(
            doc_ids=[*ids, *keys["doc_ids"], *(d for _, d in request.labels)],
            owner_ids=[*request.owners, *keys["owner_ids"]],
            query_ids=[*qids, *keys["query_ids"], *(q for q, _ in request.labels)]) if str(a) in by_label]
    docs = ws.store.get_many(ids)
    return {
        "request_docs": list(request.doc_ids), "request_owners": list(request.owners), "source_owners": sources,
        "reason": request.reason, "doc_ids": ids, "query_ids": qids,
        "hashes": sorted(set(ws.store.hashes(ids).values())),
        "probe_texts": {d.id: d.contents for d in docs[:OWN_TEXT_PROBES]},
        "text_windows": ws.ledger.text_windows(_texts(ws, docs, qids)),
        "lineage_keys": {f: list(v) for f, v in keys.items()},
        "indexes": sorted({i.ref.name for i in holders} | {a.name for a in affected if a.kind == "index"}
                          | ({i.ref.name for i in ws.indexes()} if isinstance(request, RecoveredRequest) else set())),
        "models": [str(a) for a in affected if a.kind != "index"],
        "artifacts_before": [str(a) for a in affected],
        "unlearn": unlearn,
        "labels": [list(p) for p in request.labels],
        "started_at": time.time(),
    }


def _label_models(ws: Workspace, labels: tuple[tuple[str, str], ...]) -> set[str]:
    """The models (not indexes) whose lineage holds both the query and the document of some label."""
    out: set[str] = set()
    for q, d in labels:
        by_doc = {str(a) for a in ws.registry.affected_by(doc_ids=[d]) if a.kind != "index"}
        out |= by_doc & {str(a) for a in ws.registry.affected_by(query_ids=[q])}
    return out


def _lineage_keys(ws: Workspace, request: ForgetRequest | RecoveredRequest, ids: list[str],
                  qids: list[str]) -> dict[str, tuple[str, ...]]:
    """The hashed forms of the request's ids, by lineage field (how a model not replaced by an earlier
    request names them after its ``scrub`` step)."""
    keys = {"doc_ids": set(hashed_forms(ws, ids, "doc")), "owner_ids": set(hashed_forms(ws, request.owners, "owner")),
            "query_ids": set(hashed_forms(ws, qids, "query"))}
    if isinstance(request, RecoveredRequest):
        for name, extra in request.keys.items():
            keys[name] |= set(extra)
    return {name: tuple(sorted(v)) for name, v in keys.items()}


def _texts(ws: Workspace, docs: list, qids: list[str]) -> list[str]:  # noqa: ANN001
    """Every text a request forgets, as stored (title, text, both) and its queries' texts."""
    return [t for d in docs for t in (d.title, d.text, d.contents)] + list(ws.store.query_texts(qids).values())


def _held_ids(ws: Workspace) -> set[str]:
    """Every document id the store or an index holds."""
    held = set(ws.store.ids())
    for info in ws.indexes():
        held |= _ids_of(ws, info)
    return held


def _ids_of(ws: Workspace, info: IndexInfo) -> set[str]:
    return set(ws.registry.lineage_of(info.ref).doc_ids)


def _delete_from_index(ws: Workspace, info: IndexInfo, ids: list[str]) -> dict[str, Any]:
    index = ws.load_index(info.ref.name)
    removed = index.delete(ids)
    retrained = False
    if isinstance(index, DenseIndex) and not index.exactness()["exact"]:
        index.retrain()  # IVF centroids trained with the deleted vectors: re-train them
        retrained = True
    ws.save_index(info.ref.name, index)
    ws.registry.remove_lineage_docs(info.ref, ids)
    return {"removed": removed, "retrained_centroids": retrained}


def rebuild_like(ws: Workspace, index: BM25Index | DenseIndex) -> BM25Index | DenseIndex:
    """A fresh index with the same configuration over the store's current documents."""
    docs = list(ws.store.iter_docs())
    if isinstance(index, BM25Index):
        fresh = BM25Index(index.variant, index.k1, index.b, index.epsilon, index.analyzer)
        fresh.add(docs)
        return fresh
    fresh = DenseIndex(index.dim, index.kind, index.encoder_version, index.nlist, index.hnsw_m, index.nprobe)
    fresh.attach(ws.encoder(index.encoder_version), ws.cache)
    fresh.add(docs)
    return fresh


def check_index(ws: Workspace, name: str, forgotten: list[str], probes: dict[str, str]) -> dict[str, Any]:
    """Index-level checks: absent by id, absent from own-text searches, equal to a rebuild."""
    index = ws.load_index(name)
    store_ids = set(ws.store.ids())
    index_ids = set(index.doc_ids if isinstance(index, BM25Index) else index.order)
    hits = index.search(list(probes.values()), 10) if probes else []
    leaked = sorted({h.doc_id for hs in hits for h in hs} & set(forgotten))
    out = {
        "absent_by_id": not any(d in index for d in forgotten),
        "absent_from_own_text_search": not leaked,
        "own_text_queries": len(probes),
        "equals_rebuild": index.fingerprint() == rebuild_like(ws, index).fingerprint(),
        "others_present": index_ids == store_ids,
    }
    if isinstance(index, DenseIndex):
        out["exact_structure"] = index.exactness()["exact"]
    return out


def verify_request(ws: Workspace, plan: dict[str, Any], indexes: list[IndexInfo],
                   rid: str | None = None) -> dict[str, Any]:
    """Every check of one request, right after it ran (the texts are still in memory); with ``rid``,
    also that no id the request named (by its keyed hash) is left in the store or any index."""
    ids = plan["doc_ids"]
    remaining = set(ws.store.hashes().values())
    checks: dict[str, Any] = {
        "ledger_chain_intact": ws.ledger.verify_chain() > 0,
        "store_absent": not any(d in ws.store for d in ids),
        "cache_absent": not any(ws.cache.contains_hash(h) for h in plan["hashes"] if h not in remaining),
        "indexes": {i.ref.name: check_index(ws, i.ref.name, ids, plan["probe_texts"]) for i in indexes},
    }
    if rid is not None:
        checks["requested_ids_absent"] = not _named_ids_left(ws, rid)
    if plan.get("labels"):  # no active model's recorded groups train a forgotten pair as relevant any more
        checks["labels_absent"] = not ({tuple(p) for p in plan["labels"]} & trained_labels(ws))
    flat = [checks["ledger_chain_intact"], checks["store_absent"], checks["cache_absent"],
            checks.get("requested_ids_absent", True), checks.get("labels_absent", True)]
    flat += [v for c in checks["indexes"].values() for v in c.values() if isinstance(v, bool)]
    checks["all_passed"] = all(flat)
    return checks


def _named_ids_left(ws: Workspace, rid: str) -> list[str]:
    """Ids in the store or any index whose keyed hash the request named."""
    first = next(e for e in ws.ledger.entries(rid) if e.kind == "pending")
    named = set(first.payload["doc_hashes"])
    return [d for d in _held_ids(ws) if ws.ledger.hash_id(d) in named]


def _receipt(ws: Workspace, rid: str, request: ForgetRequest | RecoveredRequest, plan: dict[str, Any],
             removed: dict[str, int], checks: dict[str, Any], models: list[dict[str, Any]] | None = None,
             reindexed: dict[str, str] | None = None) -> dict[str, Any]:
    from lethe.pipelines.unlearn import summary

    level = "deleted" if checks["all_passed"] else "incomplete"
    first = next(e for e in ws.ledger.entries(rid) if e.kind == "pending").payload
    models = models or []
    handled = {m["model"] for m in models if m.get("level") in ("exact", "unlearned", "unchanged")}
    still = [m for m in plan["models"] if m not in handled]  # an ``unverified`` model may still hold the data
    if not plan["models"]:
        model_level = "no model saw the data"
    elif not models:
        model_level = "not reached: weight unlearning not run"
    elif still:
        model_level = f"not reached: {len(still)} model(s) could not be unlearned"
    else:
        model_level = summary(models)
    return {
        "request_id": rid, "reason": request.reason, "level": level,
        "doc_hashes": ws.ledger.hash_ids(plan["doc_ids"]),
        "owner_hashes": ws.ledger.hash_ids(request.owners, "owner"),
        "query_hashes": ws.ledger.hash_ids(plan["query_ids"], "query"),
        "label_hashes": ws.ledger.hash_labels(tuple(p) for p in plan.get("labels", [])),
        "content_hashes": ws.ledger.hash_ids(plan["hashes"], "content"),
        "text_windows": plan.get("text_windows", ""),
        "n_docs": len(plan["doc_ids"]), "n_queries": len(plan["query_ids"]), "n_labels": len(plan.get("labels", [])),
        "not_found": len(first.get("not_found_hashes", [])), "not_found_hashes": first.get("not_found_hashes", []),
        "already_forgotten": first.get("already_forgotten", 0),
        "unlearn_requested": plan.get("unlearn"), "chain_head": ws.ledger.head(),
        "removed_from_indexes": removed, "artifacts_before": plan["artifacts_before"],
        "models_still_trained_on_data": still,
        "model_level": model_level, "unlearning": models, "reindexed": reindexed or {},
        "verification": checks, "started_at": plan["started_at"], "finished_at": time.time(),
    }


def verify_workspace(ws: Workspace, head: str | None = None, trace: bool = True) -> dict[str, Any]:
    """Re-check every request later (``lethe verify``): no id text is needed, only keyed hashes.

    Holds the writer lock, so the checks see one committed state (a running forget finishes first).
    ``head`` is a chain head kept outside the workspace (a receipt's ``chain_head``); the head file
    beside the workspace is checked too. ``trace`` scans every file under the home for the forgotten
    ids and texts (:func:`lethe.pipelines.scrub.trace_report`); anything found fails verification.
    """
    with ws.writing():
        out: dict[str, Any] = {"ledger_chain_intact": True}
        try:
            out["ledger_entries"] = ws.ledger.verify_chain(head)
        except LedgerError as exc:
            out.update(ledger_chain_intact=False, ledger_problem=str(exc))
        out.update(_tombstone_checks(ws))
        store_ids, forgotten = set(ws.store.ids()), ws.ledger.forgotten_hashes("doc")
        out["indexes"] = {info.ref.name: _index_now(ws, info, store_ids, forgotten) for info in ws.indexes()}
        out.update(_request_states(ws))
        if trace:
            out["trace"] = trace_report(ws)
    flags = [out["ledger_chain_intact"], out["store_free_of_forgotten"], out["queries_free_of_forgotten"],
             not out["pending_requests"], not out["failed_requests"], not out.get("trace", {}).get("found")]
    flags += [r["checks_at_forget_time_passed"] and r["level"] == "deleted" for r in out["receipts"]]
    flags += [v for c in out["indexes"].values() for v in c.values()]
    out["ok"] = all(flags)
    out["to_finish"] = [f"lethe forget --retry {r}" for r in out["failed_requests"] + out["incomplete_requests"]]
    if out["pending_requests"]:
        out["to_finish"].append("lethe forget --resume")
    return out


def _tombstone_checks(ws: Workspace) -> dict[str, Any]:
    led = ws.ledger
    docs, contents = led.forgotten_hashes("doc"), led.forgotten_hashes("content")
    queries = led.forgotten_hashes("query")
    stored = ws.store.hashes()
    return {
        "forgotten_docs": len(docs),
        "store_free_of_forgotten": not any(led.hash_id(d) in docs or led.hash_id(h, "content") in contents
                                           for d, h in stored.items()),
        "queries_free_of_forgotten": not any(led.hash_id(q, "query") in queries for q in ws.store.query_ids()),
    }


def _index_now(ws: Workspace, info: IndexInfo, store_ids: set[str], forgotten: set[str]) -> dict[str, bool]:
    index = ws.load_index(info.ref.name)
    ids = index.doc_ids if isinstance(index, BM25Index) else index.order
    return {
        "free_of_forgotten": not any(ws.ledger.hash_id(d) in forgotten for d in ids),
        "equals_rebuild": index.fingerprint() == rebuild_like(ws, index).fingerprint(),
        "others_present": set(ids) == store_ids,
    }


def _request_states(ws: Workspace) -> dict[str, Any]:
    """The latest receipt of every finished request (its checks ran at forget time, when the text
    was still there), and the requests pending, failed or incomplete."""
    receipts = []
    for rid in ws.ledger.receipt_requests():
        e = ws.ledger.state(rid)
        if e is None:
            continue
        receipts.append({"request_id": rid, "level": e.payload.get("level", "unknown"),
                         "n_docs": e.payload.get("n_docs", 0),
                         "checks_at_forget_time_passed": e.payload.get("verification", {}).get("all_passed", False)})
    return {"receipts": receipts, "pending_requests": ws.ledger.pending_requests(),
            "failed_requests": ws.ledger.failed_requests(),
            "incomplete_requests": [r["request_id"] for r in receipts if r["level"] != "deleted"]}
