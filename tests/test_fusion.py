"""Tests of lethe.retrieval.fusion: RRF and convex fusion checked by hand, FusionRetriever."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lethe.retrieval.fusion import FusionRetriever, convex, normalize, rrf
from lethe.types import Hit

A = [Hit("a", 10.0), Hit("b", 6.0), Hit("c", 2.0)]
B = [Hit("c", 0.9), Hit("a", 0.5), Hit("d", 0.1)]


def as_dict(hits: list[Hit]) -> dict[str, float]:
    return {h.doc_id: h.score for h in hits}


def test_rrf_by_hand() -> None:
    fused = rrf([A, B])
    assert [h.doc_id for h in fused] == ["a", "c", "b", "d"]
    expected = {"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63}
    assert as_dict(fused) == pytest.approx(expected)
    assert all(isinstance(h, Hit) for h in fused)


def test_rrf_k_depth_and_ties() -> None:
    assert as_dict(rrf([A, B], k=0)) == pytest.approx({"a": 1 + 1 / 2, "c": 1 / 3 + 1, "b": 1 / 2, "d": 1 / 3})
    assert [h.doc_id for h in rrf([A, B], depth=2)] == ["a", "c"]
    # equal fused scores are ordered by doc id
    tied = rrf([[Hit("y", 1.0), Hit("x", 0.5)], [Hit("x", 1.0), Hit("y", 0.5)]])
    assert [h.doc_id for h in tied] == ["x", "y"]
    assert tied[0].score == pytest.approx(tied[1].score)
    assert rrf([[], []]) == []


def test_rrf_ignores_scores() -> None:
    rescaled = [Hit(h.doc_id, h.score * 1000 - 7) for h in A]
    assert rrf([rescaled, B]) == rrf([A, B])


def test_rrf_weights() -> None:
    fused = rrf([A, B], weights=[1.0, 3.0])
    expected = {"a": 1 / 61 + 3 / 62, "c": 1 / 63 + 3 / 61, "b": 1 / 62, "d": 3 / 63}
    assert as_dict(fused) == pytest.approx(expected)
    assert [h.doc_id for h in fused] == ["c", "a", "d", "b"]  # the weights change the order
    with pytest.raises(ValueError):
        rrf([A, B], weights=[1.0])


def test_normalize() -> None:
    assert normalize(A, "minmax") == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0})
    assert normalize([Hit("x", 3.0), Hit("y", 1.0)], "zscore") == pytest.approx({"x": 1.0, "y": -1.0})
    assert normalize(A, "none") == {"a": 10.0, "b": 6.0, "c": 2.0}
    assert normalize([Hit("x", 4.0), Hit("y", 4.0)], "minmax") == {"x": 1.0, "y": 1.0}
    assert normalize([Hit("x", 4.0), Hit("y", 4.0)], "zscore") == {"x": 0.0, "y": 0.0}
    assert normalize([], "minmax") == {}
    with pytest.raises(ValueError, match=r"unknown normalisation 'l2'.*\['minmax', 'zscore', 'none'\]"):
        normalize(A, "l2")


def test_convex_minmax_by_hand() -> None:
    # minmax: A -> a 1, b .5, c 0 ; B -> c 1, a .5, d 0 ; a missing doc scores the list minimum (0)
    fused = convex([A, B], [0.3, 0.7])
    expected = {"a": 0.3 * 1 + 0.7 * 0.5, "b": 0.3 * 0.5 + 0.7 * 0, "c": 0.3 * 0 + 0.7 * 1, "d": 0.0}
    assert as_dict(fused) == pytest.approx(expected)
    assert [h.doc_id for h in fused] == ["c", "a", "b", "d"]
    assert [h.doc_id for h in convex([A, B], [0.9, 0.1])][:2] == ["a", "b"]
    assert [h.doc_id for h in convex([A, B], [0.3, 0.7], depth=1)] == ["c"]


def test_convex_missing_doc_scores_list_minimum() -> None:
    x = [Hit("x", 3.0), Hit("y", 1.0)]  # zscore: x 1, y -1
    z = [Hit("b", 5.0), Hit("y", 3.0)]  # zscore: b 1, y -1
    fused = as_dict(convex([x, z], [0.5, 0.5], norm="zscore"))
    assert fused == pytest.approx({"x": 0.5 * 1 + 0.5 * -1, "y": -1.0, "b": 0.5 * -1 + 0.5 * 1})
    raw = as_dict(convex([x, z], [0.25, 0.75], norm="none"))
    assert raw == pytest.approx({"x": 0.25 * 3 + 0.75 * 3, "y": 0.25 * 1 + 0.75 * 3, "b": 0.25 * 1 + 0.75 * 5})


@pytest.mark.parametrize("weights", [[0.5, 0.6], [0.2, 0.2], [1.5, -0.5]])
def test_convex_weights_must_sum_to_one(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        convex([A, B], weights)


def test_convex_bad_arguments() -> None:
    with pytest.raises(ValueError, match="2 rankings but 3 weights"):
        convex([A, B], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="unknown normalisation 'softmax'"):
        convex([A, B], [0.5, 0.5], norm="softmax")


class FakeSearcher:
    """Returns fixed hit lists per query text; records the depth asked for."""

    def __init__(self, table: dict[str, list[Hit]]) -> None:
        self.table = table
        self.ks: list[int] = []

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        self.ks.append(k)
        return [self.table.get(q, [])[:k] for q in queries]


def test_fusion_retriever_rrf() -> None:
    lex = FakeSearcher({"q": A, "r": [Hit("z", 1.0)]})
    dense = FakeSearcher({"q": B})
    fr = FusionRetriever([lex, dense], depth=50)
    out = fr.search(["q", "r", "unknown"], k=2)
    assert lex.ks == [50] and dense.ks == [50]  # each retriever searched to depth
    assert [[h.doc_id for h in hs] for hs in out] == [["a", "c"], ["z"], []]
    assert out[0] == rrf([A, B], depth=2)
    fr.search(["q"], k=80)
    assert lex.ks[-1] == 80  # k beyond depth is honoured
    weighted = FusionRetriever([lex, dense], weights=[1.0, 3.0], rrf_k=60).search(["q"], k=4)
    assert [h.doc_id for h in weighted[0]] == ["c", "a", "d", "b"]


def test_fusion_retriever_convex() -> None:
    lex, dense = FakeSearcher({"q": A}), FakeSearcher({"q": B})
    fused = FusionRetriever([lex, dense], method="convex", weights=[0.3, 0.7]).search(["q"], k=3)[0]
    assert [h.doc_id for h in fused] == ["c", "a", "b"]
    assert fused[0].score == pytest.approx(0.7)
    equal = FusionRetriever([lex, dense], method="convex").search(["q"], k=10)[0]  # default: equal weights
    assert as_dict(equal) == pytest.approx({"a": 0.75, "c": 0.5, "b": 0.25, "d": 0.0})
    with pytest.raises(ValueError, match="sum to 1"):
        FusionRetriever([lex, dense], method="convex", weights=[1.0, 1.0]).search(["q"])


def test_fusion_retriever_unknown_method() -> None:
    with pytest.raises(ValueError, match=r"unknown fusion 'max'.*\['rrf', 'convex'\]"):
        FusionRetriever([FakeSearcher({})], method="max")
