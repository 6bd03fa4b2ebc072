"""Index-level forgetting: plan from lineage, execute journaled steps, verify, write a receipt.

``forget(ws, request)`` removes the documents (or every document of the owners) from the store,
every index that holds them (found through ``registry.affected_by``) and the embedding cache,
then verifies and appends a hash-chained receipt to the ledger. Each step is journaled: after a
crash, :func:`resume` finishes pending requests without redoing finished steps. Replaying a
completed request is a no-op. The level reported is never higher than what was checked:
``deleted`` needs every index check to pass; models trained on the data are listed as still
remembering it (weight unlearning is a later stage), never claimed as forgotten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lethe.errors import ForgetError
from lethe.pipelines.workspace import IndexInfo, Workspace
from lethe.retrieval.bm25 import BM25Index
from lethe.retrieval.dense import DenseIndex
from lethe.types import ForgetRequest
from lethe.unlearning.methods import UnlearnConfig

#: at most this many forgotten documents are searched with their own text during verification
OWN_TEXT_PROBES = 20


class InjectedCrash(RuntimeError):
    """Raised by the ``crash_after`` test hook to simulate a crash after a step."""


@dataclass
class ForgetReport:
    """What a forget call did."""

    request_id: str
    level: str
    noop: bool = False
    receipt: dict[str, Any] = field(default_factory=dict)
    steps_run: list[str] = field(default_factory=list)


def forget(ws: Workspace, request: ForgetRequest, crash_after: str | None = None,
           unlearn: str | None = None, unlearn_cfg: UnlearnConfig | None = None) -> ForgetReport:
    """Forget ``request`` everywhere in the workspace (see module docs).

    ``unlearn`` names a weight-unlearning method (``lethe.unlearning``) to run on every model that
    saw the data; without it models are only listed as still trained on the data.
    """
    if unlearn is not None:
        from lethe.pipelines.unlearn import PIPELINE_METHODS

        if unlearn not in PIPELINE_METHODS:
            raise ForgetError(f"--unlearn {unlearn!r} cannot replace registry models here; choose one of "
                              f"{', '.join(PIPELINE_METHODS)}")
    rid = ws.ledger.request_id(request.doc_ids, request.owners)
    done = ws.ledger.receipt(rid)
    if done is not None:
        return ForgetReport(rid, done.payload["level"], noop=True, receipt=done.payload)
    if rid not in ws.ledger.pending_requests():
        ws.ledger.append(rid, "pending", {
            "doc_hashes": ws.ledger.hash_ids(request.doc_ids),
            "owner_hashes": ws.ledger.hash_ids(request.owners, "owner"),
            "reason": request.reason})
    return _run(ws, rid, request, crash_after, unlearn, unlearn_cfg)


def resume(ws: Workspace, crash_after: str | None = None,
           unlearn_cfg: UnlearnConfig | None = None) -> list[ForgetReport]:
    """Finish every pending request (after a crash); finished steps are not redone."""
    reports = []
    for rid in ws.ledger.pending_requests():
        plan = ws.ledger.step_done(rid, "resolve")
        if plan is None:
            raise ForgetError(f"request {rid} crashed before it was resolved; submit it again")
        req = ForgetRequest(tuple(plan["request_docs"]), tuple(plan["request_owners"]), plan["reason"])
        reports.append(_run(ws, rid, req, crash_after, plan.get("unlearn"), unlearn_cfg))
    return reports


def _step(ws: Workspace, rid: str, name: str, ran: list[str], crash_after: str | None, fn) -> dict:  # noqa: ANN001
    result = ws.ledger.step_done(rid, name)
    if result is None:
        result = fn() or {}
        ws.ledger.mark_done(rid, name, result)
        ran.append(name)
    if crash_after is not None and name.startswith(crash_after):
        raise InjectedCrash(f"injected crash after step {name!r}")
    return result


def _run(ws: Workspace, rid: str, request: ForgetRequest, crash_after: str | None,
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
    checks = _step(ws, rid, "verify", ran, crash_after, lambda: verify_request(ws, plan, indexes))
    receipt = _receipt(ws, rid, request, plan, removed, checks, models, reindexed)
    ws.ledger.append(rid, "receipt", receipt)
    ws.ledger.clear_journal(rid)
    return ForgetReport(rid, receipt["level"], receipt=receipt, steps_run=ran + ["receipt"])


def _unlearn_models(ws: Workspace, rid: str, plan: dict[str, Any], ran: list[str], crash_after: str | None,
                    cfg: UnlearnConfig | None) -> list[dict[str, Any]]:
    """One journaled step per affected model, parents first, before the store step (texts still there)."""
    from lethe.pipelines.unlearn import unlearn_model

    replaced: dict[str, str] = {}
    out = []
    for model in plan["models"]:
        res = _step(ws, rid, f"model:{model}", ran, crash_after,
                    lambda m=model: unlearn_model(ws, rid, m, plan, plan["unlearn"], cfg, dict(replaced)))
        if res.get("new"):
            replaced[res["model"]] = res["new"]
        out.append(res)
    return out


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
              lambda: {"retired": [str(ws.registry.retire(m, request_id=rid)) for m in olds]})
    return reindexed


def _resolve(ws: Workspace, request: ForgetRequest, unlearn: str | None = None) -> dict[str, Any]:
    owned = [d for o in request.owners for d in ws.store.docs_of_owner(o)]
    ids = list(dict.fromkeys([*request.doc_ids, *owned]))
    qids = sorted({q for o in request.owners for q in ws.store.queries_of_owner(o)})
    holders = [i for i in ws.indexes() if any(d in _ids_of(ws, i) for d in ids)]
    present = [d for d in ids if d in ws.store]
    if not present and not holders and not qids:
        _nothing_to_forget(ws, request)
    affected = ws.registry.affected_by(doc_ids=ids, owner_ids=request.owners, query_ids=qids)
    docs = ws.store.get_many(ids)
    return {
        "request_docs": list(request.doc_ids), "request_owners": list(request.owners),
        "reason": request.reason, "doc_ids": ids, "query_ids": qids,
        "hashes": sorted(set(ws.store.hashes(ids).values())),
        "probe_texts": {d.id: d.contents for d in docs[:OWN_TEXT_PROBES]},
        "indexes": sorted({i.ref.name for i in holders} | {a.name for a in affected if a.kind == "index"}),
        "models": [str(a) for a in affected if a.kind != "index"],
        "artifacts_before": [str(a) for a in affected],
        "unlearn": unlearn,
        "started_at": time.time(),
    }


def _ids_of(ws: Workspace, info: IndexInfo) -> set[str]:
    return set(ws.registry.lineage_of(info.ref).doc_ids)


def _nothing_to_forget(ws: Workspace, request: ForgetRequest) -> None:
    forgotten = ws.ledger.forgotten_hashes("doc")
    unknown = [d for d in request.doc_ids if ws.ledger.hash_id(d) not in forgotten]
    if request.doc_ids and not unknown and not request.owners:
        return  # every id was forgotten by an earlier request: nothing left to do
    what = f"doc ids {unknown[:5]}" if unknown else f"owners {list(request.owners)[:5]}"
    raise ForgetError(f"nothing to forget: {what} are in no store, index or query set of this workspace")


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


def verify_request(ws: Workspace, plan: dict[str, Any], indexes: list[IndexInfo]) -> dict[str, Any]:
    """Every check of one request, right after it ran (the texts are still in memory)."""
    ids = plan["doc_ids"]
    remaining = set(ws.store.hashes().values())
    checks: dict[str, Any] = {
        "ledger_chain_intact": ws.ledger.verify_chain() > 0,
        "store_absent": not any(d in ws.store for d in ids),
        "cache_absent": not any(ws.cache.contains_hash(h) for h in plan["hashes"] if h not in remaining),
        "indexes": {i.ref.name: check_index(ws, i.ref.name, ids, plan["probe_texts"]) for i in indexes},
    }
    flat = [checks["ledger_chain_intact"], checks["store_absent"], checks["cache_absent"]]
    flat += [v for c in checks["indexes"].values() for v in c.values() if isinstance(v, bool)]
    checks["all_passed"] = all(flat)
    return checks


def _receipt(ws: Workspace, rid: str, request: ForgetRequest, plan: dict[str, Any],
             removed: dict[str, int], checks: dict[str, Any], models: list[dict[str, Any]] | None = None,
             reindexed: dict[str, str] | None = None) -> dict[str, Any]:
    from lethe.pipelines.unlearn import summary

    level = "deleted" if checks["all_passed"] else "incomplete"
    models = models or []
    handled = {m["model"] for m in models if m.get("level") in ("exact", "approximate", "unchanged")}
    still = [m for m in plan["models"] if m not in handled]
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
        "n_docs": len(plan["doc_ids"]), "n_queries": len(plan["query_ids"]),
        "removed_from_indexes": removed, "artifacts_before": plan["artifacts_before"],
        "models_still_trained_on_data": still,
        "model_level": model_level, "unlearning": models, "reindexed": reindexed or {},
        "verification": checks, "started_at": plan["started_at"], "finished_at": time.time(),
    }


def verify_workspace(ws: Workspace) -> dict[str, Any]:
    """Re-check every receipt later (``lethe verify``): no id text is needed, only salted hashes."""
    out: dict[str, Any] = {"ledger_entries": ws.ledger.verify_chain(), "ledger_chain_intact": True}
    forgotten = ws.ledger.forgotten_hashes("doc")
    store_ids = ws.store.ids()
    out["forgotten_docs"] = len(forgotten)
    out["store_free_of_forgotten"] = not any(ws.ledger.hash_id(d) in forgotten for d in store_ids)
    out["indexes"] = {}
    for info in ws.indexes():
        index = ws.load_index(info.ref.name)
        ids = index.doc_ids if isinstance(index, BM25Index) else index.order
        out["indexes"][info.ref.name] = {
            "free_of_forgotten": not any(ws.ledger.hash_id(d) in forgotten for d in ids),
            "equals_rebuild": index.fingerprint() == rebuild_like(ws, index).fingerprint(),
            "others_present": set(ids) == set(store_ids),
        }
    receipts = [e for e in ws.ledger.entries() if e.kind == "receipt"]
    # the own-text searches ran at forget time (the text is gone now); their results are in the receipts
    out["receipts"] = [{"request_id": e.request_id, "level": e.payload["level"], "n_docs": e.payload["n_docs"],
                        "checks_at_forget_time_passed": e.payload["verification"]["all_passed"]}
                       for e in receipts]
    out["pending_requests"] = ws.ledger.pending_requests()
    flags = [out["store_free_of_forgotten"], not out["pending_requests"]]
    flags += [r["checks_at_forget_time_passed"] for r in out["receipts"]]
    flags += [v for c in out["indexes"].values() for v in c.values()]
    out["ok"] = all(flags)
    return out
