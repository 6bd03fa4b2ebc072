"""doc2query: queries written by an LLM for documents (a tiny random Llama here), stored like any query,
used as training queries, and forgotten with their document (store, lineage, the models trained on them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lethe.errors import LetheError
from lethe.pipelines import doc2query as d2q
from lethe.pipelines.doc2query import (
    Doc2QueryConfig,
    add_generated_queries,
    clean_query,
    generated_id,
    sample_documents,
    source_of,
    source_owner,
    with_generated,
)
from lethe.pipelines.forget import forget, verify_workspace
from lethe.pipelines.train import read_examples, train_teacher, training_data
from lethe.ranking.cross_encoder import CETrainConfig
from lethe.registry import ModelSpec
from lethe.types import ForgetRequest
from tests.conftest import TEXTS
from tests.test_train import tiny_dataset

CFG = Doc2QueryConfig(max_new_tokens=6, batch_size=4, passage_tokens=16)


@pytest.fixture
def llm_ws(workspace, tmp_path: Path):  # noqa: ANN001, ANN201
    from lethe.registry.testing import build_tiny_llama

    llm_dir = build_tiny_llama(tmp_path / "llm", TEXTS * 3, max_positions=512)
    workspace.registry.register(ModelSpec(name="tiny-llm", kind="llm", source=f"path:{llm_dir}"))
    return workspace


def test_clean_query_and_ids() -> None:
    assert clean_query('  Query: "what is bm25?"\nmore text') == "what is bm25?"
    assert clean_query("\n\nSearch query: vitamins") == "vitamins"
    assert clean_query("Question: What is the role of Nrg1?") == "What is the role of Nrg1?"
    assert clean_query("   ") == ""
    assert source_of(generated_id("d:7", 2)) == "d:7" and source_owner("d3") == "source-doc:d3"
    with pytest.raises(LetheError, match="not a generated query"):
        source_of("q1")


def test_generated_queries_are_stored_owned_by_their_source_and_not_asked_again(llm_ws, monkeypatch) -> None:  # noqa: ANN001
    ws = llm_ws
    calls = []
    real = d2q.generate_queries

    def counting(model, tok, texts, cfg=None, on_step=None):  # noqa: ANN001, ANN202
        calls.append(sorted(texts))
        return {d: [f"question about {d}"] for d in texts} if not calls[1:] else real(model, tok, texts, cfg)

    monkeypatch.setattr(d2q, "generate_queries", counting)
    queries = add_generated_queries(ws, ["d2", "d5"], "tiny-llm", CFG)
    assert [q.id for q in queries] == [generated_id("d2"), generated_id("d5")]
    assert queries[0].text == "question about d2"
    assert set(queries[0].owners) == {"u1", "u9", source_owner("d2")}   # the document's owners and the document
    assert ws.store.query_texts([generated_id("d5")]) == {generated_id("d5"): "question about d5"}
    again = add_generated_queries(ws, ["d2", "d5", "d7"], "tiny-llm", CFG)     # only d7 is new
    assert calls[1] == ["d7"] and [q.id for q in again][:2] == [q.id for q in queries]
    with pytest.raises(LetheError, match="not in the store"):
        add_generated_queries(ws, ["nope"], "tiny-llm", CFG)
    with pytest.raises(LetheError, match="needs an LLM"):
        add_generated_queries(ws, ["d8"], "tiny", CFG)


def test_a_real_tiny_llm_writes_deterministic_queries(llm_ws) -> None:  # noqa: ANN001
    model, tok = llm_ws.registry.load(llm_ws.registry.get("tiny-llm"))
    texts = {"d0": TEXTS[0], "d4": TEXTS[4], "d9": TEXTS[9]}
    first = d2q.generate_queries(model, tok, texts, CFG)
    assert set(first) == set(texts) and first == d2q.generate_queries(model, tok, texts, CFG)   # greedy
    sampled = d2q.generate_queries(model, tok, texts, Doc2QueryConfig(**{**CFG.__dict__, "per_doc": 3}))
    assert all(len(v) <= 3 for v in sampled.values())


def test_training_on_generated_queries_and_forgetting_their_document(llm_ws, monkeypatch) -> None:  # noqa: ANN001
    ws = llm_ws
    monkeypatch.setattr(d2q, "generate_queries",
                        lambda model, tok, texts, cfg=None, on_step=None: {d: [f"about {t[:20]}"] for d, t in
                                                                            texts.items()})
    data = training_data(ws, tiny_dataset(), "train", pool_depth=8)
    judged = {d for rel in data.qrels.values() for d in rel}
    docs = sample_documents(ws, 3, exclude=sorted(judged))
    assert len(docs) == 3 and not set(docs) & judged and docs == sample_documents(ws, 3, exclude=sorted(judged))
    more = with_generated(ws, data, add_generated_queries(ws, docs, "tiny-llm", CFG), pool_depth=8)
    gen = [generated_id(d) for d in docs]
    assert set(more.queries) == set(data.queries) | set(gen)
    assert all(more.qrels[q] == {source_of(q): 1} and more.pools[q] for q in gen)
    assert source_owner(docs[0]) in more.lineage().owner_ids
    ref, _ = train_teacher(ws, more, "teacher", "tiny", CETrainConfig(epochs=1, lr=1e-3, queries_per_step=3,
                                                                       max_length=32), n_negatives=3)
    assert set(gen) <= {e.query_id for e in read_examples(ws, str(ref))}
    rep = forget(ws, ForgetRequest((docs[0],)), unlearn="retrain")
    assert rep.reached and rep.receipt["n_queries"] == 1      # the query written from the forgotten document
    assert gen[0] not in ws.store.query_texts(gen) and gen[1] in ws.store.query_texts(gen)
    new = read_examples(ws, "teacher@v2")
    assert gen[0] not in {e.query_id for e in new} and gen[1] in {e.query_id for e in new}
    check = verify_workspace(ws)
    assert check["ok"], json.dumps({k: v for k, v in check.items() if k not in ("ledger_entries",)}, default=str)
