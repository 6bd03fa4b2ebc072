"""The gated segment-cosine head of cross-encoders grown from a bi-encoder (lethe.ranking.cross_encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lethe.ranking.cross_encoder import (
    HEAD_KEY,
    CETrainConfig,
    CrossEncoderReranker,
    Group,
    pair_logits,
    segment_head,
    train_cross_encoder,
    use_segment_head,
)
from tests.conftest import TEXTS

QUERIES = ["fox jumping", "cardano rewards", "vitamin health"]


def _grown(tiny_bert_dir: Path, gate: float = -6.0):  # noqa: ANN202
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    use_segment_head(model, gate=gate)
    return model


def test_closed_gate_scores_exactly_as_the_bi_encoder(tiny_bert_dir: Path) -> None:
    """At gate -> -inf the head is the bi-encoder: 20 x cosine of sentence-transformers' own embeddings."""
    import torch
    from sentence_transformers import SentenceTransformer

    bi = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    ce = _grown(tiny_bert_dir, gate=-1e4)
    pairs = [(q, t) for q in QUERIES for t in TEXTS[:5]]
    with torch.no_grad():
        got = pair_logits(ce, pairs, 128).numpy()
    qv = bi.encode([q for q, _ in pairs], normalize_embeddings=True)
    dv = bi.encode([t for _, t in pairs], normalize_embeddings=True)
    np.testing.assert_allclose(got, 20.0 * (qv * dv).sum(1), atol=2e-4)


def test_an_open_gate_lets_the_document_change_the_query_side(tiny_bert_dir: Path) -> None:
    import torch

    closed, opened = _grown(tiny_bert_dir, gate=-1e4), _grown(tiny_bert_dir, gate=0.0)
    pairs = [(QUERIES[0], t) for t in TEXTS[:4]]
    with torch.no_grad():
        a, b = pair_logits(closed, pairs, 128).numpy(), pair_logits(opened, pairs, 128).numpy()
    assert np.abs(a - b).max() > 1e-3


def test_training_moves_the_gate_and_saves_it_in_the_config(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    ce = _grown(tiny_bert_dir)
    groups = [Group(q, TEXTS[i], [TEXTS[j] for j in range(12) if j != i][:3])
              for q, i in zip(QUERIES, (0, 1, 4))] * 4
    losses = train_cross_encoder(ce, groups, CETrainConfig(epochs=4, lr=2e-3, queries_per_step=3,
                                                           max_length=64, warmup=0.0))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert not hasattr(ce.model, "lethe_gate")             # only a parameter while training
    gate = segment_head(ce)["gate"]
    assert gate != -6.0
    ce.save_pretrained(str(tmp_path / "ce"))
    loaded = CrossEncoder(str(tmp_path / "ce"), num_labels=1, device="cpu")
    assert getattr(loaded.model.config, HEAD_KEY)["gate"] == pytest.approx(gate)
    pairs = [(q, t) for q in QUERIES for t in TEXTS[:4]]
    with torch.no_grad():
        np.testing.assert_allclose(pair_logits(loaded, pairs, 64).numpy(), pair_logits(ce, pairs, 64).numpy(),
                                   atol=1e-5)


def test_reranker_counts_the_tokens_it_reads(tiny_bert_dir: Path) -> None:
    ce = _grown(tiny_bert_dir)
    rr = CrossEncoderReranker(ce, max_length=64)
    q_len = len(ce.tokenizer(QUERIES[1])["input_ids"])
    d_len = sum(len(ce.tokenizer(t)["input_ids"]) for t in TEXTS[:3])
    assert rr._count_tokens(QUERIES[1], TEXTS[:3]) == 3 * q_len + d_len


def test_a_model_without_two_token_types_is_refused(tiny_bert_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    emb = ce.model.base_model.embeddings
    import torch

    emb.token_type_embeddings = torch.nn.Embedding(1, emb.token_type_embeddings.weight.shape[1])
    with pytest.raises(ValueError, match="two token types"):
        use_segment_head(ce)


# ----------------------------------------------------------------------------- the one-pass list head
def _listed(tiny_bert_dir: Path, gate: float = -6.0, doc_gate: float | None = None):  # noqa: ANN202
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    use_segment_head(model, gate=gate, listwise=True, doc_gate=doc_gate)
    return model


def test_list_head_with_closed_gates_is_the_bi_encoder(tiny_bert_dir: Path) -> None:
    """Both gates -> -inf: every candidate of the one-pass list scores 20 x its bi-encoder cosine."""
    from sentence_transformers import SentenceTransformer

    bi = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    ce = _listed(tiny_bert_dir, gate=-1e4)
    rr = CrossEncoderReranker(ce, max_length=64)
    got = rr.score(QUERIES[0], TEXTS[:6])
    qv = bi.encode([QUERIES[0]], normalize_embeddings=True)[0]
    dv = bi.encode(TEXTS[:6], normalize_embeddings=True)
    np.testing.assert_allclose(got, 20.0 * dv @ qv, atol=2e-4)


def test_list_head_is_permutation_equivariant_and_reads_the_other_candidates(tiny_bert_dir: Path) -> None:
    """Candidates have no position in the list: shuffling them shuffles their scores, nothing else; with the
    candidate-candidate gate open, a candidate's score depends on which others share its list."""
    ce = _listed(tiny_bert_dir, gate=0.0, doc_gate=0.0)
    rr = CrossEncoderReranker(ce, max_length=64)
    base = rr.score(QUERIES[1], TEXTS[:6])
    perm = [3, 0, 5, 1, 4, 2]
    np.testing.assert_allclose(rr.score(QUERIES[1], [TEXTS[i] for i in perm]), base[perm], atol=1e-4)
    other = rr.score(QUERIES[1], [*TEXTS[:5], TEXTS[8]])
    assert abs(other[0] - base[0]) > 1e-4


def test_list_head_ranks_in_one_call_and_groups_keep_their_lists(tiny_bert_dir: Path) -> None:
    """A reranked list is one call reading q + every candidate once; training groups of the same query stay
    separate lists (``group_logits``), while plain pairs of one query are read as one list."""
    import torch

    from lethe.ranking.cross_encoder import group_logits
    from lethe.types import Hit

    ce = _listed(tiny_bert_dir, gate=0.0, doc_gate=0.0)
    texts = {f"d{i}": t for i, t in enumerate(TEXTS[:5])}
    rr = CrossEncoderReranker(ce, max_length=64, texts=texts)
    ranked = rr.rerank(QUERIES[0], [Hit(d, 1.0) for d in texts])
    assert ranked.stats.calls == 1
    q_len = len(ce.tokenizer(QUERIES[0])["input_ids"])
    assert ranked.stats.input_tokens == q_len + sum(len(ce.tokenizer(t)["input_ids"]) for t in TEXTS[:5])
    with torch.no_grad():
        two = group_logits(ce, [(QUERIES[0], TEXTS[:3]), (QUERIES[0], TEXTS[3:6])], 64).numpy()
        one = [group_logits(ce, [(QUERIES[0], TEXTS[i:i + 3])], 64).numpy() for i in (0, 3)]
        pairs = pair_logits(ce, [(QUERIES[0], t) for t in TEXTS[:6]], 64).numpy()
    np.testing.assert_allclose(two, np.concatenate(one), atol=1e-5)
    assert np.abs(pairs - two).max() > 1e-4            # one list of six differs from two lists of three


def test_list_head_query_view_shows_the_query_biased_snippet(tiny_bert_dir: Path) -> None:
    """``passage_view="query"`` is recorded in the head and applied to every candidate (same tokens as the
    snippet read as a head)."""
    from lethe.ranking.prompts import passage_view

    long_doc = ". ".join(["filler words about nothing in particular"] * 30 + ["cardano rewards are paid per epoch"])
    view = _listed(tiny_bert_dir, gate=0.0, doc_gate=0.0)
    use_segment_head(view, gate=0.0, listwise=True, doc_gate=0.0, passage_view="query")
    assert segment_head(view)["passage_view"] == "query"
    snippet = passage_view(view.tokenizer, long_doc, QUERIES[1], 22, "query")
    assert "cardano" in snippet and "cardano" not in passage_view(view.tokenizer, long_doc, QUERIES[1], 22, "head")
    head = _listed(tiny_bert_dir, gate=0.0, doc_gate=0.0)
    np.testing.assert_allclose(CrossEncoderReranker(view, max_length=24).score(QUERIES[1], [long_doc, TEXTS[0]]),
                               CrossEncoderReranker(head, max_length=24).score(QUERIES[1], [snippet, TEXTS[0]]),
                               atol=1e-5)
    with pytest.raises(Exception, match="passage view"):
        use_segment_head(head, listwise=True, passage_view="tail")


def test_list_head_training_moves_both_gates_and_saves_them(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    ce = _listed(tiny_bert_dir)
    groups = [Group(q, TEXTS[i], [TEXTS[j] for j in range(12) if j != i][:5])
              for q, i in zip(QUERIES, (0, 1, 4))] * 4
    losses = train_cross_encoder(ce, groups, CETrainConfig(epochs=4, lr=2e-3, queries_per_step=3, max_length=48,
                                                           warmup=0.0, listwise=True))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    head = segment_head(ce)
    assert head["list"] and head["gate"] != -6.0 and head["doc_gate"] != -6.0
    assert not hasattr(ce.model, "lethe_doc_gate")
    ce.save_pretrained(str(tmp_path / "ce"))
    loaded = CrossEncoderReranker(CrossEncoder(str(tmp_path / "ce"), num_labels=1, device="cpu"), max_length=48)
    np.testing.assert_allclose(loaded.score(QUERIES[2], TEXTS[:7]),
                               CrossEncoderReranker(ce, max_length=48).score(QUERIES[2], TEXTS[:7]), atol=1e-5)
