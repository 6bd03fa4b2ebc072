"""Rerankers: identifiers, prompts, permutation parsing, importance weights, modes and listwise training."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from lethe.errors import LetheError
from lethe.ranking.base import Ranked, Reranked, Reranker, RerankStats, fetch_texts, rerank_run
from lethe.ranking.listwise_train import (
    ListwiseExample,
    ListwiseTrainConfig,
    encode_example,
    prepare_model,
    rank_weight,
    target_span,
    target_tokens,
    train_listwise,
    window_examples,
)
from lethe.ranking.llm import ListwiseLLMReranker, QueryLikelihoodReranker
from lethe.ranking.prompts import (
    identifiers,
    label_text,
    parse_permutation,
    sliding_windows,
    truncate_tokens,
    user_prompt,
)
from lethe.training.losses import weighted_nll
from lethe.types import Hit
from tests.conftest import TEXTS, make_docs, make_queries


class CharTokenizer:
    """One token per character (like a tokenizer that splits every digit): ids are code points."""

    eos_token_id = 0
    pad_token_id = 0
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids if i)

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        return {"input_ids": self.encode(text), "offset_mapping": [(i, i + 1) for i in range(len(text))]}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lethe.registry.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("llama") / "m", TEXTS * 3, max_positions=2048)


@pytest.fixture
def llm(tiny_llama: Path):  # noqa: ANN201
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def _hits(n: int) -> list[Hit]:
    return [Hit(f"d{i}", float(n - i)) for i in range(n)]


TEXT_OF = {d.id: d.contents for d in make_docs()}


# ------------------------------------------------------------------------------- identifiers / parsing
def test_identifiers_are_single_distinct_tokens_and_digits_are_checked() -> None:
    tok = CharTokenizer()
    labels, ids = identifiers(tok, 61)  # 26 + 26 letters + the 9 one-character numbers
    assert labels[:3] == ["A", "B", "C"] and labels[26] == "a" and labels[-1] == "9"
    assert len(set(ids)) == 61
    with pytest.raises(LetheError, match="only 61 single-token"):
        identifiers(tok, 62)  # "AB" and "10" are two tokens for this tokenizer


def test_identifiers_of_a_real_bpe_tokenizer(llm) -> None:  # noqa: ANN001
    _, tok = llm
    labels, ids = identifiers(tok, 20)
    for label, tid in zip(labels, ids):
        enc = tok.encode(f"[{label}]", add_special_tokens=False)
        assert len(enc) == 3 and enc[1] == tid


@pytest.mark.parametrize(("text", "expected"), [
    ("[C] > [A] > [B]", [2, 0, 1]),
    ("[C]>[A]>[B]", [2, 0, 1]),                       # no spaces
    ("[B] > [B] > [A] > [B]", [1, 0, 2]),              # repeats dropped, C appended
    ("[Z] > [C] > [17] > [A]", [2, 0, 1]),             # unknown ids dropped
    ("Sure! Here is the ranking: [B] then [C]", [1, 2, 0]),  # chatter tolerated
    ("", [0, 1, 2]),                                   # nothing -> original order
    ("[[A]] > [ B ] > [c]", [0, 1, 2]),                # malformed brackets / wrong case
    ("A > C > B", [0, 1, 2]),                          # no brackets -> original order
])
def test_parse_permutation_is_robust(text: str, expected: list[int]) -> None:
    assert parse_permutation(text, ["A", "B", "C"]) == expected


def test_sliding_windows_bottom_up() -> None:
    assert sliding_windows(20, 10, 5) == [(10, 20), (5, 15), (0, 10)]
    spans = sliding_windows(100, 20, 10)
    assert len(spans) == 9 and spans[0] == (80, 100) and spans[-1] == (0, 20)
    assert sliding_windows(7, 10, 5) == [(0, 7)]
    assert sliding_windows(12, 10, 5) == [(2, 12), (0, 10)]
    with pytest.raises(LetheError):
        sliding_windows(10, 0, 5)


def test_prompt_truncates_passages_and_rewrites_brackets(llm) -> None:  # noqa: ANN001
    _, tok = llm
    long = " ".join(TEXTS) + " see [1] and [A]"
    short = truncate_tokens(tok, long, 10)
    assert len(tok.encode(short, add_special_tokens=False)) <= 10
    assert "[" not in truncate_tokens(tok, "see [1] and [A]", 50)
    prompt = user_prompt("fox", ["p one", "p two"], ["A", "B"])
    assert "[A] p one" in prompt and "[B] p two" in prompt and "e.g., [B] > [A]" in prompt
    assert "Search Query: fox." in prompt


# ------------------------------------------------------------------------------- loss weights
def test_importance_weights_on_a_known_label() -> None:
    tok = CharTokenizer()
    ids, w = target_tokens(tok, [2, 0, 1], ["A", "B", "C"], alpha=0.5)
    assert tok.decode(ids) == "[C] > [A] > [B]"
    w1, w2, w3 = 2.0, 1 + 1 / math.log2(3), 1.5
    expected = [w1] * 3 + [0.5] * 3 + [w2] * 3 + [0.5] * 3 + [w3] * 3 + [w3]  # last: EOS at rank 3
    assert ids[-1] == tok.eos_token_id
    np.testing.assert_allclose(w, expected)
    assert rank_weight(1) == 2.0 and round(rank_weight(10), 2) == 1.29 and round(rank_weight(100), 2) == 1.15
    _, plain = target_tokens(tok, [2, 0, 1], ["A", "B", "C"], weighted=False)
    assert set(plain) == {1.0}


def test_importance_weights_with_a_bpe_tokenizer(llm) -> None:  # noqa: ANN001
    _, tok = llm
    labels, _ = identifiers(tok, 4)
    ids, w = target_tokens(tok, [3, 1, 0, 2], labels)
    assert len(ids) == len(w) and tok.decode(ids[:-1]) == label_text([3, 1, 0, 2], labels)
    assert w[0] == 2.0 and w[-1] == rank_weight(4) and min(w) >= 1.0


def test_weighted_nll_matches_a_hand_computation() -> None:
    import torch

    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    ids = torch.tensor([1, 2, 3, 4, 5])
    w = torch.tensor([0.0, 0.0, 2.0, 1.0, 1.5])  # prompt, prompt, then three target tokens
    logp = torch.log_softmax(logits, -1)
    manual = -(2.0 * logp[1, 3] + 1.0 * logp[2, 4] + 1.5 * logp[3, 5]) / 3
    assert torch.allclose(weighted_nll(logits, ids, w), manual)
    ones = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])
    assert torch.allclose(weighted_nll(logits, ids, ones),
                          torch.nn.functional.cross_entropy(logits[:-1], ids[1:]))


def test_the_loss_on_the_target_span_equals_the_loss_on_every_position(llm) -> None:  # noqa: ANN001
    import torch

    model, tok = llm
    ex = ListwiseExample("fox", [TEXT_OF[f"d{i}"] for i in range(4)], [2, 0, 3, 1])
    ids, w = encode_example(tok, ex, ListwiseTrainConfig(passage_tokens=8))
    keep = target_span(w)
    assert w[-keep] == 0 and w[-keep + 1] > 0 and keep < len(ids)  # the last prompt token, then the targets
    inp = torch.tensor(ids)
    with torch.no_grad():
        full = weighted_nll(model(input_ids=inp[None]).logits[0], inp, torch.tensor(w))
        tail = model(input_ids=inp[None], logits_to_keep=keep).logits[0]
        assert tail.shape[0] == keep
        assert torch.allclose(weighted_nll(tail, inp[-keep:], torch.tensor(w[-keep:])), full, atol=1e-5)


def test_lora_layers_adapts_only_the_top_layers(llm) -> None:  # noqa: ANN001
    model, _ = llm
    n = model.config.num_hidden_layers
    wrapped = prepare_model(model, ListwiseTrainConfig(lora_r=2, lora_alpha=4, lora_layers=1))
    adapted = {int(name.split(".layers.")[1].split(".")[0]) for name, p in wrapped.named_parameters()
               if p.requires_grad}
    assert adapted == {n - 1}


def test_window_examples_restrict_the_target_order() -> None:
    ex = ListwiseExample("q", [f"p{i}" for i in range(6)], [5, 0, 3, 1, 4, 2], [f"d{i}" for i in range(6)], "q1")
    wins = window_examples(ex, 4, 2)
    assert [w.doc_ids for w in wins] == [["d2", "d3", "d4", "d5"], ["d0", "d1", "d2", "d3"]]
    assert wins[0].order == [3, 1, 2, 0]  # d5 > d3 > d4 > d2
    assert wins[1].order == [0, 3, 1, 2]  # d0 > d3 > d1 > d2
    judged = ListwiseExample("q", ex.passages, ex.order, ex.doc_ids, "q1", relevant=2)  # d5, d0
    assert [w.relevant for w in window_examples(judged, 4, 2)] == [1, 1]
    with pytest.raises(LetheError, match="relevant=7"):
        ListwiseExample("q", ex.passages, ex.order, relevant=7)
    with pytest.raises(LetheError, match="permutation"):
        ListwiseExample("q", ["a", "b"], [0, 0])


def test_shuffled_inputs_keep_the_target_ranking_of_documents() -> None:
    import random

    from lethe.ranking.listwise_train import shuffled

    ex = ListwiseExample("q", [f"p{i}" for i in range(8)], [5, 0, 3, 1, 4, 2, 7, 6], [f"d{i}" for i in range(8)],
                         relevant=2)
    out = shuffled(ex, random.Random(3))
    assert out.relevant == 2
    assert out.passages != ex.passages and sorted(out.doc_ids) == sorted(ex.doc_ids)
    assert [out.doc_ids[i] for i in out.order] == [ex.doc_ids[i] for i in ex.order]
    assert [out.passages[i] for i in out.order] == [ex.passages[i] for i in ex.order]


# ------------------------------------------------------------------------------- rerankers
@pytest.mark.parametrize("mode", ["full", "sliding", "first_token"])
def test_listwise_modes_return_permutations_with_costs(llm, mode: str) -> None:  # noqa: ANN001
    model, tok = llm
    rr = ListwiseLLMReranker(model, tok, mode=mode, window=4, step=2, passage_tokens=12, max_new_tokens=8,
                             texts=TEXT_OF)
    assert isinstance(rr, Reranker)
    hits = _hits(6)
    ranked = rr.rerank("fox jumping", hits)
    assert isinstance(ranked, Ranked) and sorted(h.doc_id for h in ranked) == sorted(h.doc_id for h in hits)
    assert ranked.stats.calls == {"full": 1, "sliding": 2, "first_token": 1}[mode]
    assert ranked.stats.input_tokens > 0 and ranked.stats.seconds > 0
    assert (ranked.stats.output_tokens == 0) == (mode == "first_token")
    assert len(rr.rerank("fox", hits, k=3)) == 3


def test_full_reads_fewer_tokens_than_sliding(llm) -> None:  # noqa: ANN001
    model, tok = llm
    hits = _hits(10)
    full = ListwiseLLMReranker(model, tok, mode="full", passage_tokens=12, max_new_tokens=4, texts=TEXT_OF)
    slid = ListwiseLLMReranker(model, tok, mode="sliding", window=4, step=2, passage_tokens=12,
                               max_new_tokens=4, texts=TEXT_OF)
    assert full.rerank("fox", hits).stats.input_tokens < slid.rerank("fox", hits).stats.input_tokens


def test_first_token_orders_by_identifier_logits(llm) -> None:  # noqa: ANN001
    model, tok = llm
    rr = ListwiseLLMReranker(model, tok, mode="first_token", passage_tokens=12, texts=TEXT_OF)
    hits = _hits(5)
    ranked = rr.rerank("fox", hits)
    scores = [h.score for h in ranked]
    assert scores == sorted(scores, reverse=True)
    direct = rr.first_token_scores("fox", [truncate_tokens(tok, TEXT_OF[h.doc_id], 12) for h in hits],
                                   RerankStats())
    assert np.isclose(max(direct), scores[0])


def test_query_likelihood_is_a_batch_invariant_mean_logprob(llm) -> None:  # noqa: ANN001
    model, tok = llm
    rr = QueryLikelihoodReranker(model, tok, passage_tokens=20, batch_size=2, texts=TEXT_OF)
    hits = _hits(5)
    ranked = rr.rerank("cardano staking rewards", hits)
    assert ranked.stats.calls == 3 and sorted(h.doc_id for h in ranked) == sorted(h.doc_id for h in hits)
    # batched (padded) scores equal one-at-a-time scores
    passages = [TEXT_OF[h.doc_id] for h in hits]
    one = QueryLikelihoodReranker(model, tok, passage_tokens=20, batch_size=1).score("cardano", passages)
    assert np.allclose(rr.score("cardano", passages), one, atol=1e-5)
    # and the score is a mean log-probability
    assert (one < 0).all() and np.isfinite(one).all()


def test_missing_text_and_bad_mode_are_clear_errors(llm) -> None:  # noqa: ANN001
    model, tok = llm
    with pytest.raises(LetheError, match="doc id 'nope'"):
        fetch_texts(TEXT_OF, ["d0", "nope"])
    with pytest.raises(LetheError, match="unknown listwise mode"):
        ListwiseLLMReranker(model, tok, mode="diagonal")
    with pytest.raises(LetheError, match="no text source"):
        ListwiseLLMReranker(model, tok).rerank("q", _hits(2))


def test_reranked_pipeline_and_run(workspace, llm) -> None:  # noqa: ANN001
    from lethe.pipelines.rerank import doc_texts

    model, tok = llm
    rr = ListwiseLLMReranker(model, tok, mode="first_token", passage_tokens=12, texts=doc_texts(workspace))
    pipe = rr.after(workspace.load_index("bm25"), depth=5)
    assert isinstance(pipe, Reranked)
    out = pipe.search(["fox jumping", "cardano rewards"], k=2)
    assert [len(hs) for hs in out] == [2, 2] and pipe.stats.calls == 2
    first = workspace.load_index("bm25").search(["fox jumping"], 5)[0]
    assert {h.doc_id for h in out[0]} <= {h.doc_id for h in first}
    run = {"q1": {h.doc_id: h.score for h in first}}
    new, stats = rerank_run(rr, run, {"q1": "fox jumping"}, depth=5)
    assert set(new["q1"]) == set(run["q1"]) and stats.calls == 1
    with pytest.raises(LetheError, match="not among the queries"):
        rerank_run(rr, {"qx": {"d0": 1.0}}, {"q1": "fox"})


# ------------------------------------------------------------------------------- training
@pytest.mark.parametrize("shuffle", [False, True, 0.5])
def test_listwise_training_lowers_the_loss(llm, shuffle: float) -> None:  # noqa: ANN001
    model, tok = llm
    passages = [TEXT_OF[f"d{i}"] for i in range(4)]
    examples = [ListwiseExample("fox", passages, [1, 0, 3, 2]), ListwiseExample("cardano", passages, [2, 3, 0, 1])]
    cfg = ListwiseTrainConfig(epochs=20, lr=1e-2, grad_accum=2, passage_tokens=8, lora_r=0, warmup=0.0,
                              shuffle_inputs=shuffle)
    model, losses = train_listwise(model, tok, examples, cfg)
    assert len(losses) == 20 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_listwise_lora_training_registers_lineage_and_reloads(workspace, tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    from lethe.data import Dataset
    from lethe.pipelines.rerank import (
        listwise_examples,
        listwise_order,
        load_reranker,
        read_labels,
        train_listwise_reranker,
    )
    from lethe.registry import ModelSpec

    assert listwise_order(["a", "b", "c", "d"], {"c": 1, "d": 2}, {"a": 0.1, "b": 0.9}) == [3, 2, 1, 0]
    llm_dir = tmp_path / "llm"
    shutil.copytree(tiny_llama, llm_dir)
    workspace.registry.register(ModelSpec(name="tiny-llm", kind="llm", source=f"path:{llm_dir}"))
    docs = make_docs()
    ds = Dataset("toy", {d.id: d for d in docs}, {q.id: q for q in make_queries()},
                 {"train": {"q1": {"d0": 1}, "q2": {"d2": 1}}})
    run = {"q1": ["d3", "d0", "d1", "d5"], "q2": ["d4", "d6", "d2"]}
    teacher = {"q1": {"d1": 0.9, "d3": 0.1}, "q2": {"d4": 0.5, "d6": 0.7}}
    examples = listwise_examples(workspace, ds, run, teacher, "train")
    assert [ex.order for ex in examples] == [[1, 2, 0, 3], [2, 1, 0]]
    cfg = ListwiseTrainConfig(epochs=2, lr=1e-3, grad_accum=1, passage_tokens=8, lora_r=4, lora_alpha=8,
                              passage_view="query")
    ref, losses = train_listwise_reranker(workspace, ds, examples, "listwise", base="tiny-llm", cfg=cfg)
    assert ref.manifest["params"]["passage_view"] == "query"
    assert ref.kind == "adapter" and len(losses) == 4
    extra = ref.manifest["extra"]
    assert extra["steps"] == 4 and extra["seconds"] > 0 and extra["first_loss"] == losses[0]
    lineage = workspace.registry.lineage_of(ref)
    assert set(lineage.doc_ids) == {"d0", "d1", "d2", "d3", "d4", "d5", "d6"}
    assert set(lineage.query_ids) == {"q1", "q2"} and "u1" in set(lineage.owner_ids)
    assert str(ref) in [str(a) for a in workspace.registry.affected_by(doc_ids=["d6"])]
    assert [ex.relevant for ex in examples] == [1, 1]  # d0 in q1's list, d2 in q2's
    assert read_labels(workspace, str(ref))[1] == {"query_id": "q2", "doc_ids": ["d4", "d6", "d2"], "order": [2, 1, 0],
                                                   "relevant": 1}
    # the reloaded adapter (merged) scores exactly as the trained model
    rr = load_reranker(workspace, str(ref), "first_token", passage_tokens=8)
    again = load_reranker(workspace, str(ref), "first_token", passage_tokens=8)
    assert rr.passage_view == "query"  # the view it was trained with, unless told otherwise
    assert load_reranker(workspace, str(ref), "full", passage_view="head").passage_view == "head"
    hits = _hits(4)
    a, b = rr.rerank("fox", hits), again.rerank("fox", hits)
    assert [h.doc_id for h in a] == [h.doc_id for h in b]
    assert torch.allclose(torch.tensor([h.score for h in a]), torch.tensor([h.score for h in b]))
    with pytest.raises(LetheError, match="not a reranker"):
        load_reranker(workspace, "bm25")


@pytest.mark.parametrize("method", ["grad_diff", "retrain"])
def test_forget_relabels_the_listwise_reranker(workspace, tiny_llama: Path, tmp_path: Path, method: str) -> None:
    from lethe.data import Dataset
    from lethe.pipelines.forget import forget
    from lethe.pipelines.rerank import listwise_examples, read_labels, train_listwise_reranker
    from lethe.registry import ModelSpec
    from lethe.types import ForgetRequest

    llm_dir = tmp_path / "llm"
    shutil.copytree(tiny_llama, llm_dir)
    workspace.registry.register(ModelSpec(name="tiny-llm", kind="llm", source=f"path:{llm_dir}"))
    ds = Dataset("toy", {d.id: d for d in make_docs()}, {q.id: q for q in make_queries()},
                 {"train": {"q1": {"d0": 1}, "q2": {"d2": 1}}})
    run = {"q1": ["d3", "d0", "d6", "d5"], "q2": ["d4", "d6", "d2"]}
    examples = listwise_examples(workspace, ds, run, {}, "train")
    cfg = ListwiseTrainConfig(epochs=1, lr=1e-3, grad_accum=1, passage_tokens=8, lora_r=4, lora_alpha=8)
    ref, _ = train_listwise_reranker(workspace, ds, examples, "listwise", base="tiny-llm", cfg=cfg)
    rep = forget(workspace, ForgetRequest(("d6",)), unlearn=method)
    step = next(m for m in rep.receipt["unlearning"] if m["model"] == str(ref))
    assert step["new"] == "listwise@v2" and step["edited_lists"] == 2
    assert step["level"] == ("exact" if method == "retrain" else "unverified")
    labels = read_labels(workspace, "listwise@v2")
    assert [r["doc_ids"] for r in labels] == [["d3", "d0", "d5"], ["d4", "d2"]]
    assert [r["order"] for r in labels] == [[1, 0, 2], [1, 0]]  # the teacher's order, d6 cut out
    assert [r["relevant"] for r in labels] == [1, 1]  # d6 was not relevant: the counts stay
    assert "d6" not in workspace.registry.lineage_of("listwise@v2").doc_ids
    assert not workspace.registry.get("listwise@v1").active
    assert (rep.receipt["models_still_trained_on_data"] == []) == (method == "retrain")  # unverified: still listed


def test_first_token_rank_loss_is_weighted_ranknet_over_the_identifier_logits() -> None:
    import torch

    from lethe.ranking.listwise_train import first_token_rank_loss

    vocab = torch.zeros(10)
    vocab[[3, 5, 7]] = torch.tensor([2.0, 0.0, -1.0])  # candidates 0, 1, 2 -> tokens 3, 5, 7
    order = [1, 0, 2]  # label: candidate 1, then 0, then 2 -> scores in label order 0, 2, -1
    s = [0.0, 2.0, -1.0]
    sp = torch.nn.functional.softplus
    pairs = [(1, 2), (1, 3), (2, 3)]
    num = sum(float(sp(torch.tensor(s[b - 1] - s[a - 1]))) / (a + b) for a, b in pairs)
    den = sum(1.0 / (a + b) for a, b in pairs)
    got = float(first_token_rank_loss(vocab, [3, 5, 7], order))
    assert abs(got - num / den) < 1e-6
    # the loss falls when the label's first candidate gets the highest logit
    vocab[5] = 5.0
    assert float(first_token_rank_loss(vocab, [3, 5, 7], order)) < got


def test_encode_points_at_the_position_that_predicts_the_first_identifier(llm) -> None:  # noqa: ANN001
    from lethe.ranking.listwise_train import encode

    _, tok = llm
    passages = [TEXT_OF[f"d{i}"] for i in range(4)]
    enc = encode(tok, ListwiseExample("fox", passages, [2, 0, 3, 1]), ListwiseTrainConfig(passage_tokens=8))
    assert enc.ids[enc.head + 1] == enc.id_tokens[2]  # the next token is candidate 2's identifier
    assert enc.weights[enc.head + 1] > 0 and all(w == 0 for w in enc.weights[: enc.head])


def test_listwise_training_with_the_first_token_loss_learns_the_first_identifier(llm) -> None:  # noqa: ANN001
    import torch

    from lethe.ranking.listwise_train import encode, first_token_rank_loss

    model, tok = llm
    passages = [TEXT_OF[f"d{i}"] for i in range(4)]
    ex = ListwiseExample("fox", passages, [2, 0, 3, 1])
    cfg = ListwiseTrainConfig(epochs=10, lr=1e-2, grad_accum=1, passage_tokens=8, lora_r=0, warmup=0.0,
                              first_token_loss=1.0)
    enc = encode(tok, ex, cfg)

    def head_logits() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=torch.tensor([enc.ids[: enc.head + 1]])).logits[0, -1]

    before = float(first_token_rank_loss(head_logits(), enc.id_tokens, enc.order))
    model, losses = train_listwise(model, tok, [ex], cfg)
    after = head_logits()
    assert float(first_token_rank_loss(after, enc.id_tokens, enc.order)) < 0.5 * before
    assert int(np.argmax([float(after[t]) for t in enc.id_tokens])) == 2


def test_rank_positions_cover_every_identifier_in_label_order(llm) -> None:  # noqa: ANN001
    import torch

    from lethe.ranking.listwise_train import encode, first_token_rank_loss, rank_positions_loss, rank_weight

    _, tok = llm
    passages = [TEXT_OF[f"d{i}"] for i in range(4)]
    enc = encode(tok, ListwiseExample("fox", passages, [2, 0, 3, 1]), ListwiseTrainConfig(passage_tokens=8))
    assert [enc.ids[h + 1] for h in enc.heads] == [enc.id_tokens[i] for i in enc.order]
    logits = torch.randn(len(enc.ids), max(enc.ids) + 1)
    first = rank_positions_loss(logits, enc, 1)
    assert torch.isclose(first, first_token_rank_loss(logits[enc.head], enc.id_tokens, enc.order))
    every = rank_positions_loss(logits, enc, 0)  # ranks 1..3 (the last has nothing left to order)
    parts = [rank_weight(k + 1) * first_token_rank_loss(logits[enc.heads[k]], enc.id_tokens, enc.order[k:])
             for k in range(3)]
    assert torch.isclose(every, sum(parts) / sum(rank_weight(k + 1) for k in range(3)))


def test_constrained_generation_names_each_identifier_at_most_once(llm) -> None:  # noqa: ANN001
    import torch

    from lethe.ranking.decoding import identifier_processor

    model, tok = llm
    labels, label_ids = identifiers(tok, 4)
    start = 3
    prefix = tok.encode("[B] > [D] > [", add_special_tokens=False)
    ids = torch.tensor([[1, 2, 3] + prefix])
    scores = torch.zeros(1, len(tok))
    scores[0, label_ids[1]] = 9.0  # the model would repeat [B]
    out = identifier_processor(tok, start, labels, label_ids, True)(ids, scores.clone())
    assert torch.isinf(out[0, label_ids[1]]) and torch.isinf(out[0, label_ids[3]])
    assert int(out[0].argmax()) in (label_ids[0], label_ids[2])
    # elsewhere (not after a bracket) nothing is masked
    mid = torch.tensor([[1, 2, 3] + tok.encode("[B]", add_special_tokens=False)])
    assert torch.equal(identifier_processor(tok, start, labels, label_ids, True)(mid, scores.clone()), scores)
    # in generation (answer opened with a bracket): the identifiers named are distinct and real
    from lethe.ranking.prompts import prompt_ids, user_prompt

    labels6, ids6 = identifiers(tok, 6)
    prompt = prompt_ids(tok, user_prompt("fox", [TEXT_OF[f"d{i}"] for i in range(6)], labels6), answer_prefix="[")
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id,
                         logits_processor=identifier_processor(tok, len(prompt) - 1, labels6, ids6, True))
    new = gen[0, len(prompt) - 1 :].tolist()
    after_bracket = [new[i] for i in range(1, len(new)) if tok.decode(new[:i], skip_special_tokens=True).endswith("[")]
    assert after_bracket and len(after_bracket) == len(set(after_bracket)) and set(after_bracket) <= set(ids6)


# ------------------------------------------------------------------------------- passage views
def test_query_snippet_keeps_the_head_and_adds_the_matching_sentence(llm) -> None:  # noqa: ANN001
    from lethe.ranking.prompts import passage_view, query_snippet

    _, tok = llm
    text = ("Alpha study of cells. Background sentence one about nothing here. Another filler sentence "
            "without terms. The fox jumped over the lazy dog in the garden.")
    snip = query_snippet(tok, text, "does the fox jump over the dog", 16)
    head = truncate_tokens(tok, text, 8)
    assert snip.startswith(head + " ... ") and "fox" in snip
    assert len(tok.encode(snip, add_special_tokens=False)) <= 16 + len(tok.encode(" ... ", add_special_tokens=False))
    # when the head already holds the query terms (or nothing matches), the view is the head
    assert query_snippet(tok, text, "alpha cells", 16) == truncate_tokens(tok, text, 16)
    assert query_snippet(tok, text, "zebra", 16) == truncate_tokens(tok, text, 16)
    assert passage_view(tok, text, "does the fox jump over the dog", 16, "query") == snip
    assert passage_view(tok, text, "fox", 16) == truncate_tokens(tok, text, 16)
    with pytest.raises(LetheError, match="passage view"):
        passage_view(tok, text, "fox", 16, "middle")
    with pytest.raises(LetheError, match="passage view"):
        ListwiseTrainConfig(passage_view="middle")
