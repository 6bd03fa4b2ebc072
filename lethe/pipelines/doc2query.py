"""doc2query: training queries written by the packaged LLM for documents of the store.

A cross-encoder learns from (query, relevant document) pairs; a collection has few judged queries, but every
document can be given one: the LLM reads the document's body (not its title, which a small model copies) and
writes a question it answers (Nogueira et al. 2019, doc2query). The document is that query's positive; the pool
of a first stage gives its negatives and a teacher's scores give every margin
(``lethe train cross-encoder --doc2query N``).

Generated queries are data derived from one document, so they live in the store like any query and are
forgotten with it: each is owned by its document's owners and by :func:`source_owner` of the document
(``lethe forget`` removes the queries of a forgotten document's source owner, and every model whose lineage
holds them is unlearned like any other trained on the document). Generation is resumable: documents that
already have their queries in the store are not asked again.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lethe.errors import LetheError
from lethe.pipelines.workspace import Workspace
from lethe.types import Query

SOURCE_PREFIX = "source-doc:"   # owner of a generated query: the document it was written from
QUERY_PREFIX = "gen:"           # id of a generated query: gen:<i>:<doc id>
# measured on SciFact with SmolLM2-135M: asked for "a search query", the model copies the passage's first line or
# answers "The passage is:"; asked for a question, it writes one (benchmarks/RESULTS.md)
INSTRUCTION = "Read the passage and write a question that it answers. Answer with the question only."


def source_owner(doc_id: str) -> str:
    """The owner id that ties a generated query to the document it was written from."""
    return f"{SOURCE_PREFIX}{doc_id}"


def generated_id(doc_id: str, i: int = 0) -> str:
    """The store id of the ``i``-th query generated for ``doc_id``."""
    return f"{QUERY_PREFIX}{i}:{doc_id}"


@dataclass
class Doc2QueryConfig:
    """How queries are written: ``per_doc`` per document (greedy for 1, else nucleus sampling with ``seed``),
    from the document's first ``passage_tokens`` tokens, at most ``max_new_tokens`` long."""

    per_doc: int = 1
    passage_tokens: int = 200
    max_new_tokens: int = 32
    batch_size: int = 8
    top_p: float = 0.9
    seed: int = 0


def query_prompt(tokenizer: Any, text: str, passage_tokens: int) -> str:
    """The chat prompt that asks for a query answered by ``text`` (cut to ``passage_tokens`` tokens)."""
    from lethe.ranking.prompts import truncate_tokens

    user = f"{INSTRUCTION}\n\nPassage: {truncate_tokens(tokenizer, text, passage_tokens)}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{user}\n\nQuery:"


def clean_query(text: str) -> str:
    """The first line of a generation, without a ``Query:`` / ``Question:`` label or quotes ('' when nothing is
    left)."""
    line = next((s for s in text.strip().splitlines() if s.strip()), "")
    line = re.sub(r"^\s*((search\s+)?query|question)\s*:\s*", "", line, flags=re.I)
    return line.strip().strip('"“”\'').strip()


def generate_queries(model: Any, tokenizer: Any, texts: Mapping[str, str], cfg: Doc2QueryConfig | None = None,
                     on_step: Callable[[int, int, float], None] | None = None) -> dict[str, list[str]]:
    """Document id -> the queries the LLM writes for it (empty generations dropped)."""
    import torch

    cfg = cfg or Doc2QueryConfig()
    ids = list(texts)
    out: dict[str, list[str]] = {}
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    torch.manual_seed(cfg.seed)
    batches = [ids[i : i + cfg.batch_size] for i in range(0, len(ids), cfg.batch_size)]
    for n, batch in enumerate(batches, start=1):
        prompts = [query_prompt(tokenizer, texts[d], cfg.passage_tokens) for d in batch]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = cfg.per_doc > 1
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                                 top_p=cfg.top_p if sample else None, temperature=None, top_k=None,
                                 num_return_sequences=cfg.per_doc, pad_token_id=tokenizer.pad_token_id)
        words = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, d in enumerate(batch):
            found = [clean_query(w) for w in words[j * cfg.per_doc : (j + 1) * cfg.per_doc]]
            out[d] = list(dict.fromkeys(q for q in found if q))
        if on_step is not None:
            on_step(n, len(batches), 0.0)
    return out


def sample_documents(ws: Workspace, n: int, exclude: Sequence[str] = (), seed: int = 0) -> list[str]:
    """A fixed-seed sample of ``n`` store documents outside ``exclude`` (e.g. the judged positives)."""
    skip = set(exclude)
    ids = sorted(d for d in ws.store.ids() if d not in skip)
    return sorted(random.Random(seed).sample(ids, min(n, len(ids))))


def add_generated_queries(ws: Workspace, doc_ids: Sequence[str], llm: str, cfg: Doc2QueryConfig | None = None,
                          show_progress: bool = False) -> list[Query]:
    """The generated queries of ``doc_ids``: those already in the store, and new ones written by registry LLM
    ``llm`` for the rest and stored (in batches, so that a killed run resumes where it stopped); a bar of the
    documents written for with ``show_progress``."""
    from tqdm.auto import tqdm

    cfg = cfg or Doc2QueryConfig()
    docs = {d.id: d for d in ws.store.get_many(list(doc_ids))}
    missing = [d for d in doc_ids if d not in docs]
    if missing:
        raise LetheError(f"doc2query: {len(missing)} document(s) not in the store, e.g. {missing[:3]}")
    have = {d: ws.store.queries_of_owner(source_owner(d)) for d in doc_ids}
    todo = [d for d in doc_ids if not have[d]]
    if todo:
        ref = ws.registry.get(llm)
        if ref.kind not in ("llm", "adapter"):
            raise LetheError(f"doc2query needs an LLM; {ref} is a {ref.kind}")
        model, tokenizer = ws.registry.load(ref)
        step = max(1, cfg.batch_size) * 8
        bar = tqdm(total=len(todo), desc="doc2query", unit="doc", disable=not show_progress)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            written = generate_queries(model, tokenizer, {d: docs[d].text or docs[d].contents for d in chunk}, cfg)
            new = [Query(generated_id(d, i), q, (*docs[d].owners, source_owner(d)),
                         {"generated_by": str(ref), "source_doc": d})
                   for d in chunk for i, q in enumerate(written.get(d, []))]
            with ws.writing():
                ws.store.ingest([], new)
            bar.update(len(chunk))
        bar.close()
    ids = [q for d in doc_ids for q in ws.store.queries_of_owner(source_owner(d))]
    texts = ws.store.query_texts(ids)
    owners = ws.store.query_owners(ids)
    return [Query(q, texts[q], owners.get(q, ())) for q in ids if q in texts]


def source_of(query_id: str) -> str:
    """The document a generated query was written from (from its id)."""
    if not query_id.startswith(QUERY_PREFIX) or query_id.count(":") < 2:
        raise LetheError(f"{query_id!r} is not a generated query id ({QUERY_PREFIX}<i>:<doc id>)")
    return query_id.split(":", 2)[2]


def with_generated(ws: Workspace, data: Any, queries: Sequence[Query], pool_depth: int = 30,
                   indexes: Sequence[str] = ("bm25", "dense")) -> Any:
    """``data`` (a :class:`~lethe.pipelines.train.TrainingData`) plus the generated queries, each with its
    source document as its one positive and a pool from the same ``indexes``."""
    from lethe.pipelines.train import TrainingData
    from lethe.training.pools import build_pools

    new = {q.id: q.text for q in queries if q.id not in data.queries and source_of(q.id) in data.texts}
    if not new:
        return data
    pools = build_pools(new, [ws.load_index(n) for n in indexes], depth=pool_depth)
    return TrainingData({**data.queries, **new}, {**data.qrels, **{q: {source_of(q): 1} for q in new}}, data.texts,
                        {**data.pools, **{q: [d for d in p if d in data.texts] for q, p in pools.items()}},
                        {**data.owners, **{f"query:{q.id}": q.owners for q in queries if q.id in new}})


def with_doc2query(ws: Workspace, data: Any, n: int, llm: str, exclude: Sequence[str] | None = None,
                   pool_depth: int = 30, indexes: Sequence[str] = ("bm25", "dense"), show_progress: bool = True) -> Any:
    """``data`` plus the queries ``llm`` writes for a fixed-seed sample of ``n`` store documents outside ``exclude``
    (default: every document judged in ``data``), pooled from ``indexes``."""
    if exclude is None:
        exclude = sorted({d for rel in data.qrels.values() for d in rel})
    queries = add_generated_queries(ws, sample_documents(ws, n, exclude=exclude), llm, show_progress=show_progress)
    return with_generated(ws, data, queries, pool_depth=pool_depth, indexes=indexes)
