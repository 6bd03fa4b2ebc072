"""A sparse autoencoder per embedder, fitted on the collection and kept as a registered artifact.

``lethe train sae --model NAME`` embeds a seeded sample of the store's documents with the bi-encoder
``NAME`` and fits a sparse autoencoder on those embeddings (:func:`lethe.unlearning.sae.fit_sae`). The SAE
is registered as ``sae-NAME`` (kind ``sae``) with the bi-encoder as its ``model`` parent and, as lineage,
the documents it saw: it learned from them, so forgetting must cover it. A forget request whose documents
are in that lineage refits it on the documents it saw minus the forgotten ones, embedded by the model's
version as of that step (the unlearned version when the same request replaced the model): a new version
that never saw the data (``exact``), the old one retired with the other replaced versions.

``lethe forget --unlearn sae`` reads its tied features from the registered SAE of the model when there is
one (otherwise it fits a transient one inside the call, as before).
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from lethe.errors import LetheError
from lethe.pipelines.workspace import Workspace
from lethe.registry import ArtifactRef, Lineage, ModelSpec
from lethe.unlearning.sae import SAEConfig, fit_sae, load_sae, save_sae

#: documents sampled from the store for a new SAE (all of them when the store holds fewer)
DEFAULT_SAMPLE = 2000


def sae_name(model: ArtifactRef) -> str:
    """The registry name of a bi-encoder's SAE."""
    return f"sae-{model.name}"


def _embed(ws: Workspace, model: str, doc_ids: list[str]) -> Any:
    """The model's frozen embeddings of ``doc_ids`` (their store texts), as a float tensor [N, d]."""
    import torch

    from lethe.pipelines.unlearn import scorer_of

    scorer = scorer_of(ws, ws.registry.get(model))
    texts = {d.id: d.contents for d in ws.store.get_many(doc_ids)}
    scorer.module.eval()
    with torch.no_grad():
        return scorer.embed([texts[d] for d in doc_ids]).float()


def _register_sae(ws: Workspace, model: ArtifactRef, doc_ids: list[str], cfg: SAEConfig, seed: int,
                  old: ArtifactRef | None = None, rid: str | None = None,
                  without: Lineage | None = None) -> ArtifactRef:
    """Fit an SAE on ``model``'s embeddings of ``doc_ids``; register it (or derive ``old``'s next version)."""
    sae = fit_sae(_embed(ws, str(model), doc_ids), cfg, seed)
    extra = {"sae": {"docs": len(doc_ids), "seed": seed, "model": str(model), "dictionary": sae.enc.out_features}}
    with tempfile.TemporaryDirectory() as tmp:
        save_sae(sae, Path(tmp), cfg)
        if old is None:
            spec = ModelSpec(name=sae_name(model), kind="sae", source="path:payload")
            return ws.registry.register(spec, payload_dir=Path(tmp), lineage=Lineage(doc_ids=doc_ids),
                                        parents={"model": model}, extra=extra)
        return ws.registry.derive(old, payload_dir=Path(tmp), relation="unlearned_from", forget_request=rid,
                                  without=without, extra=extra, parents={"model": model})


def train_sae(ws: Workspace, model: str, sample: int = DEFAULT_SAMPLE, cfg: SAEConfig | None = None,
              seed: int = 0) -> ArtifactRef:
    """Fit and register the SAE of the bi-encoder ``model`` on a seeded sample of the store's documents."""
    ref = ws.registry.get(model)
    if ref.kind != "bi_encoder":
        raise LetheError(f"an SAE reads a bi-encoder's document embeddings; {ref} is a {ref.kind}")
    if sample < 1:
        raise LetheError(f"--sample must be at least 1, got {sample}")
    ids = sorted(ws.store.ids())
    if not ids:
        raise LetheError("the store holds no documents: ingest the collection first (lethe index)")
    doc_ids = sorted(random.Random(seed).sample(ids, min(sample, len(ids))))
    return _register_sae(ws, ref, doc_ids, cfg or SAEConfig(), seed)


def sae_of(ws: Workspace, model: ArtifactRef) -> ArtifactRef | None:
    """The active SAE registered for this version of ``model``, if any."""
    for ref in ws.registry.list("active"):
        if ref.kind == "sae" and any(rel == "model" and str(p) == str(model) for rel, p in ws.registry.parents_of(ref)):
            return ref
    return None


def load_registered(ws: Workspace, ref: ArtifactRef) -> Any:
    """The frozen SAE of a registered ``sae`` artifact."""
    return load_sae(ws.registry.resolve_path(ref))


def unlearn_sae(ws: Workspace, rid: str, ref: ArtifactRef, plan: dict[str, Any],
                replaced: dict[str, str]) -> dict[str, Any]:
    """Refit the SAE on the documents it saw minus the request's, embedded by its model as of now (the
    version that replaced it in this request, if any): the new version never saw the data (exact)."""
    info = (ref.manifest.get("extra", {}) or {}).get("sae", {}) or {}
    model = str(next(p for rel, p in ws.registry.parents_of(ref) if rel == "model"))
    model = replaced.get(model, model)
    gone = set(plan["doc_ids"])
    seen = [d for d in ws.registry.lineage_of(ref).doc_ids if d not in gone]
    have = set(ws.store.ids())
    kept = sorted(d for d in seen if d in have)  # ids forgotten earlier are gone from the store: not refitted on
    if not kept:
        return {"model": str(ref), "level": "not_unlearned", "why": "no document it saw is left to refit it on"}
    cfg = replace(SAEConfig(), **_fit_settings(ws, ref))
    without = Lineage(doc_ids=plan["doc_ids"], owner_ids=plan["request_owners"], query_ids=plan["query_ids"])
    new = _register_sae(ws, ws.registry.get(model), kept, cfg, int(info.get("seed", 0)), old=ref, rid=rid,
                        without=without)
    return {"model": str(ref), "new": str(new), "route": "refit", "method": "refit", "level": "exact",
            "refit_docs": len(kept), "embedded_by": model}


def _fit_settings(ws: Workspace, ref: ArtifactRef) -> dict[str, Any]:
    """The fitting settings the SAE was trained with (from its payload)."""
    import json

    from lethe.unlearning.sae import SAE_CONFIG

    cfg = json.loads((ws.registry.resolve_path(ref) / SAE_CONFIG).read_text()).get("config", {})
    return {k: v for k, v in cfg.items() if k in SAEConfig.__dataclass_fields__}
