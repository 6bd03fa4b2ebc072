"""The whole training path on tiny random models: teacher, score cache, mining, DSE, LG-ANNA, LLM+LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lethe.data import Dataset
from lethe.embedding.train import EmbedTrainConfig, train_bi_encoder
from lethe.pipelines.train import (
    listwise_groups,
    load_scores,
    read_examples,
    score_pools,
    train_embedder,
    train_teacher,
    training_data,
)
from lethe.ranking.cross_encoder import CETrainConfig
from lethe.training.pools import TeacherScores, mine
from tests.conftest import make_docs, make_queries

TRAIN_QRELS = {"q1": {"d0": 1, "d1": 1}, "q2": {"d2": 1, "d4": 1}, "q3": {"d5": 1, "d6": 1}}


def tiny_dataset() -> Dataset:
    docs = {d.id: d for d in make_docs()}
    queries = {q.id: q for q in make_queries()}
    return Dataset("tiny", docs, queries, {"train": TRAIN_QRELS, "test": TRAIN_QRELS})


def mean(xs: list[float]) -> float:
    return float(np.mean(xs))


@pytest.fixture
def data(workspace):
    return training_data(workspace, tiny_dataset(), "train", pool_depth=8)


def test_pools_and_groups(data) -> None:
    assert set(data.pools) == {"q1", "q2", "q3"}
    assert all(len(p) == 8 for p in data.pools.values())
    groups, seen = listwise_groups(data, n_negatives=3)
    assert len(groups) == 6 and all(len(g.negatives) == 3 for g in groups)
    assert {"d0", "d1", "d2", "d4", "d5", "d6"} <= seen
    lineage = data.lineage()
    assert lineage.query_ids == ("q1", "q2", "q3") and "u2" in lineage.owner_ids and "u7" in lineage.owner_ids


def test_teacher_learns_and_is_registered_with_lineage(workspace, data) -> None:
    # the tiny tokenizer (and so the pools) differ from session to session: a clear margin, not a tie-breaker
    cfg = CETrainConfig(epochs=20, lr=5e-3, queries_per_step=3, max_length=32, warmup=0.0)
    ref, losses = train_teacher(workspace, data, name="teacher", base="tiny", cfg=cfg, n_negatives=3)
    assert mean(losses[-4:]) < mean(losses[:4]) - 0.2
    assert ref.kind == "cross_encoder" and str(ref) == "teacher@v1"
    lineage = workspace.registry.lineage_of(ref)
    assert set(lineage.query_ids) == {"q1", "q2", "q3"}
    assert data.pool_docs() <= set(lineage.doc_ids)
    recorded = read_examples(workspace, str(ref))  # the exact groups, kept for unlearning
    assert recorded and {e.query_id for e in recorded} <= {"q1", "q2", "q3"}
    assert {d for e in recorded for d in (e.positive, *e.negatives)} <= set(lineage.doc_ids)
    cache_ref, scores = score_pools(workspace, data, "teacher", show_progress=False)
    assert cache_ref.kind == "cache"
    assert [(rel, str(p)) for rel, p in workspace.registry.parents_of(cache_ref)] == [("teacher", "teacher@v1")]
    assert set(scores.scores) == {"q1", "q2", "q3"}
    assert load_scores(workspace, str(cache_ref)).scores == scores.scores


def test_mining_keeps_the_margin() -> None:
    pools = {"q": ["a", "p", "b", "c", "d"]}
    qrels = {"q": {"p": 1}}
    t = TeacherScores({"q": {"p": 0.8, "a": 0.79, "b": 0.5, "c": 0.9, "d": 0.1}})
    (ex,) = mine(pools, qrels, t, n_negatives=2, ratio=0.95)
    assert ex.negatives == ("b", "d")  # a (0.79 >= 0.76) and c (above the positive) are likely false negatives
    assert ex.teacher == (0.8, 0.5, 0.1)
    (ex,) = mine(pools, qrels, t, n_negatives=1, ratio=None, margin=0.25)
    assert ex.negatives == ("b",)
    assert mine(pools, qrels, t, n_negatives=4, ratio=0.95) == []  # not enough negatives survive


@pytest.fixture
def cache(workspace, data) -> str:
    cfg = CETrainConfig(epochs=2, lr=1e-3, queries_per_step=3, max_length=32)
    train_teacher(workspace, data, name="teacher", base="tiny", cfg=cfg, n_negatives=3)
    ref, _ = score_pools(workspace, data, "teacher", show_progress=False)
    return str(ref)


@pytest.mark.parametrize("recipe", ["dse", "lganna"])
def test_student_trains_registers_and_reloads_identically(workspace, data, cache, recipe: str) -> None:
    cfg = EmbedTrainConfig(recipe=recipe, epochs=20, lr=2e-3, batch_size=3, max_length=32, warmup=0.0,
                           instruction="Given a question, retrieve answers" if recipe == "lganna" else None,
                           n_examples=1 if recipe == "lganna" else 0)
    ref, result, examples = train_embedder(workspace, data, cache, cfg, name=f"student-{recipe}", base="tiny",
                                           n_negatives=2, ratio=None)
    assert mean(result.losses[-3:]) < mean(result.losses[:3])
    assert ref.kind == "bi_encoder"
    assert ref.manifest["params"]["query_prompt"] == (
        "Instruct: Given a question, retrieve answers\nQuery: " if recipe == "lganna" else None)
    relations = {rel: str(p) for rel, p in workspace.registry.parents_of(ref)}
    assert relations == {"teacher": "teacher@v1", "cache": "teacher-scores@v1", "init": "tiny@v1"}
    lineage = workspace.registry.lineage_of(ref)
    assert {e.positive for e in examples} | {n for e in examples for n in e.negatives} <= set(lineage.doc_ids)
    assert read_examples(workspace, str(ref)) == examples
    # a re-load of the saved version gives identical embeddings
    enc1 = workspace.encoder(str(ref))
    model2 = workspace.registry.load(ref)
    texts = ["cardano staking rewards", "vitamin d"]
    np.testing.assert_array_equal(enc1.model.encode(texts), model2.encode(texts))
    # forgetting a positive reaches the teacher, its score cache and the student, in that order
    affected = [str(a) for a in workspace.registry.affected_by(doc_ids=[examples[0].positive])]
    assert affected.index("teacher@v1") < affected.index("teacher-scores@v1") < affected.index(str(ref))


def test_llm_embedder_with_lora_trains_and_reloads(tmp_path, workspace) -> None:
    from lethe.embedding.llm import add_lora, build_llm_embedder, save_adapter
    from lethe.registry import ModelSpec
    from lethe.registry.testing import build_tiny_llama
    from lethe.training.pools import MinedExample
    from tests.conftest import TEXTS

    llm_dir = build_tiny_llama(tmp_path / "llm", TEXTS * 3)
    model = build_llm_embedder(llm_dir, max_length=48)
    tok = model.tokenizer
    assert tok("hello world")["input_ids"][-1] == tok.eos_token_id  # last-token pooling reads EOS
    base_dir = tmp_path / "embed-base"
    model.save(str(base_dir))
    base = workspace.registry.register(ModelSpec(name="llm-embed", kind="bi_encoder", source=f"path:{base_dir}"))
    add_lora(model, r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    texts = {d.id: d.contents for d in make_docs()}
    queries = {q.id: q.text for q in make_queries()}
    examples = [MinedExample("q1", "d0", ("d3", "d7"), (2.0, 0.0, -1.0)),
                MinedExample("q2", "d2", ("d5", "d9"), (2.0, 0.1, -1.0)),
                MinedExample("q3", "d5", ("d0", "d11"), (2.0, 0.0, -0.5))]
    cfg = EmbedTrainConfig(recipe="lganna", epochs=15, lr=5e-3, batch_size=3, max_length=48, warmup=0.0,
                           instruction="retrieve")
    result = train_bi_encoder(model, examples, queries, texts, cfg)
    assert mean(result.losses[-3:]) < mean(result.losses[:3])
    adapter_dir = save_adapter(model, tmp_path / "adapter")
    ref = workspace.registry.register(ModelSpec(name="llm-student", kind="adapter", source="path:payload",
                                                base=str(base)), payload_dir=adapter_dir)
    loaded = workspace.registry.load(ref)
    probe = ["staking rewards", "bone health"]
    with torch.no_grad():
        np.testing.assert_allclose(loaded.encode(probe), model.encode(probe), atol=1e-6)


def test_instruction_is_left_out_of_mean_pooling_in_training_and_serving(workspace, data, cache) -> None:
    from lethe.embedding.train import embed_texts

    cfg = EmbedTrainConfig(recipe="lganna", epochs=2, lr=1e-3, batch_size=3, max_length=32, warmup=0.0,
                           instruction="Given a question, retrieve answers")
    ref, _, _ = train_embedder(workspace, data, cache, cfg, name="student-instr", base="tiny",
                               n_negatives=2, ratio=None)
    enc = workspace.encoder(str(ref))
    pooling = [m for m in enc.model if hasattr(m, "include_prompt")]
    assert pooling and not pooling[0].include_prompt  # saved with the model
    queries = ["cardano staking rewards", "vitamin d"]
    served = enc.encode_queries(queries)
    with torch.no_grad():  # the training forward pass embeds queries exactly as serving does
        trained = torch.nn.functional.normalize(embed_texts(enc.model, queries, 128, enc.query_prompt), dim=-1)
    np.testing.assert_allclose(served, trained.numpy(), atol=1e-5)
    pooling[0].include_prompt = True  # pooling the instruction too gives other vectors: the flag does something
    assert not np.allclose(enc.encode_queries(queries), served, atol=1e-4)
