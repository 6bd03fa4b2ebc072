"""Tests of lethe.pipelines.evaluate: figures checked by hand, TREC run files, evaluate_retriever."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from lethe.data import load_trec_run
from lethe.errors import LetheError
from lethe.pipelines.evaluate import (
    DEFAULT_MEASURES,
    evaluate,
    evaluate_retriever,
    hits_to_run,
    parse_measures,
    write_per_query,
    write_trec_run,
)
from lethe.types import Hit

QRELS = {
    "q1": {"d1": 1},  # one relevant doc, retrieved at rank 2
    "q2": {"d2": 2, "d3": 1},  # graded, both retrieved (ranks 2 and 1)
    "q3": {"d5": 1},  # judged but missing from the run
    "q4": {"d6": 1},  # in the run, nothing relevant retrieved
}
RUN = {
    "q1": {"dA": 3.0, "d1": 2.0, "dB": 1.0},
    "q2": {"d3": 5.0, "d2": 4.0, "dX": 3.0},
    "q4": {"dZ": 1.0},
    "q9": {"d1": 9.0},  # not judged: ignored
}

L3 = math.log2(3)
NDCG_Q1 = 1 / L3
NDCG_Q2 = (1 / 1 + 2 / L3) / (2 / 1 + 1 / L3)  # trec_eval's linear gains


def test_measures_by_hand() -> None:
    agg, per_query = evaluate(RUN, QRELS, DEFAULT_MEASURES)
    assert set(per_query) == {"q1", "q2", "q3", "q4"}
    assert per_query["q1"]["RR@10"] == pytest.approx(0.5)
    assert per_query["q1"]["nDCG@10"] == pytest.approx(NDCG_Q1)
    assert per_query["q1"]["R@100"] == pytest.approx(1.0)
    assert per_query["q2"]["RR@10"] == pytest.approx(1.0)
    assert per_query["q2"]["nDCG@10"] == pytest.approx(NDCG_Q2)
    assert per_query["q2"]["R@100"] == pytest.approx(1.0)
    for qid in ("q3", "q4"):
        assert per_query[qid] == {"nDCG@10": 0.0, "R@100": 0.0, "RR@10": 0.0}
    assert set(agg) == {"nDCG@10", "R@100", "RR@10"}
    assert agg["RR@10"] == pytest.approx((0.5 + 1.0) / 4)
    assert agg["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2) / 4)
    assert agg["R@100"] == pytest.approx(2 / 4)


def test_missing_query_counts_as_zero() -> None:
    qrels = {"q1": QRELS["q1"], "q3": QRELS["q3"]}
    with_missing, per_query = evaluate({"q1": RUN["q1"]}, qrels, ["RR@10"])
    assert with_missing["RR@10"] == pytest.approx(0.25)  # (0.5 + 0) / 2, not 0.5
    assert per_query["q3"]["RR@10"] == 0.0
    only, _ = evaluate({"q1": RUN["q1"]}, {"q1": QRELS["q1"]}, ["RR@10"])
    assert only["RR@10"] == pytest.approx(0.5)


def test_cutoffs_and_other_measures() -> None:
    agg, per_query = evaluate({"q2": RUN["q2"]}, {"q2": QRELS["q2"]}, ["R@1", "P@2", "nDCG@1", "AP"])
    assert per_query["q2"]["R@1"] == pytest.approx(0.5)
    assert per_query["q2"]["P@2"] == pytest.approx(1.0)
    assert per_query["q2"]["nDCG@1"] == pytest.approx(1 / 2)  # gain 1 at rank 1, ideal gain 2
    assert per_query["q2"]["AP"] == pytest.approx(1.0)
    # a relevant document below the cutoff does not count
    deep = {"q": {f"x{i}": 200.0 - i for i in range(100)} | {"rel": 1.0}}
    agg, _ = evaluate(deep, {"q": {"rel": 1}}, ["R@100", "RR@10", "RR"])
    assert agg["R@100"] == 0.0 and agg["RR@10"] == 0.0
    assert agg["RR"] == pytest.approx(1 / 101)


def test_parse_measures() -> None:
    parsed = parse_measures(["nDCG@10", "RR@10"])
    assert [str(m) for m in parsed] == ["nDCG@10", "RR@10"]
    with pytest.raises(LetheError, match=r"unknown measure 'Bogus@7'.*nDCG@10"):
        parse_measures(["nDCG@10", "Bogus@7"])
    with pytest.raises(LetheError, match="unknown measure"):
        evaluate(RUN, QRELS, ["nDCG@@"])


def test_hits_to_run() -> None:
    run = hits_to_run(["a", "b"], [[Hit("d1", 2), Hit("d2", 1.5)], []])
    assert run == {"a": {"d1": 2.0, "d2": 1.5}, "b": {}}
    with pytest.raises(ValueError):
        hits_to_run(["a"], [[], []])


def test_write_trec_run_roundtrip(tmp_path: Path) -> None:
    run = {"q2": {"b": 0.5, "a": 0.5, "c": 2.25}, "q1": {"x": -1.0, "y": 3.0}}
    path = tmp_path / "out" / "sys.run"
    write_trec_run(run, path, tag="mysys")
    lines = path.read_text().splitlines()
    assert lines == [
        "q2 Q0 c 1 2.250000 mysys",
        "q2 Q0 a 2 0.500000 mysys",  # ties: by doc id
        "q2 Q0 b 3 0.500000 mysys",
        "q1 Q0 y 1 3.000000 mysys",
        "q1 Q0 x 2 -1.000000 mysys",
    ]
    assert load_trec_run(path) == run
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic write cleaned up


def test_write_per_query(tmp_path: Path) -> None:
    path = tmp_path / "pq.tsv"
    write_per_query({"q1": {"RR@10": 0.5, "nDCG@10": 1 / 3}}, path)
    assert path.read_text() == "query_id\tmeasure\tvalue\nq1\tRR@10\t0.500000\nq1\tnDCG@10\t0.333333\n"


class FakeSearcher:
    """Answers from a fixed table of query text -> hits; records the calls."""

    def __init__(self, table: dict[str, list[Hit]]) -> None:
        self.table = table
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        self.calls.append((list(queries), k))
        return [self.table.get(q, [])[:k] for q in queries]


def test_evaluate_retriever_writes_files(tmp_path: Path) -> None:
    searcher = FakeSearcher({
        "where is the fox": [Hit("dA", 3.0), Hit("d1", 2.0)],
        "staking": [Hit("d3", 5.0), Hit("d2", 4.0)],
    })
    queries = {"q1": "where is the fox", "q2": "staking", "q3": "unjudged query"}
    qrels = {"q1": QRELS["q1"], "q2": QRELS["q2"], "q7": {"d1": 1}}  # q7 has no query text
    out = tmp_path / "eval"
    agg, per_query, run = evaluate_retriever(searcher, queries, qrels, ["RR@10", "nDCG@10"], k=50,
                                             out_dir=out, tag="fake")
    assert searcher.calls == [(["where is the fox", "staking"], 50)]  # judged queries only
    assert run == {"q1": {"dA": 3.0, "d1": 2.0}, "q2": {"d3": 5.0, "d2": 4.0}}
    assert agg["RR@10"] == pytest.approx(0.75)
    assert agg["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2) / 2)
    assert per_query["q1"]["RR@10"] == pytest.approx(0.5)
    assert load_trec_run(out / "fake.run") == run
    assert (out / "fake.run").read_text().splitlines()[0] == "q1 Q0 dA 1 3.000000 fake"
    rows = (out / "fake.perquery.tsv").read_text().splitlines()
    assert rows[0] == "query_id\tmeasure\tvalue"
    assert "q1\tRR@10\t0.500000" in rows and "q2\tRR@10\t1.000000" in rows
    assert len(rows) == 1 + 2 * 2


def test_evaluate_retriever_without_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    agg, _, _ = evaluate_retriever(FakeSearcher({}), {"q1": "x"}, {"q1": {"d1": 1}}, ["RR@10"])
    assert agg["RR@10"] == 0.0
    assert list(tmp_path.iterdir()) == []


def test_delta_ci_matches_a_bootstrap_by_hand() -> None:
    import numpy as np

    from lethe.pipelines.evaluate import delta_ci

    rng = np.random.default_rng(3)
    base = {f"q{i}": {"nDCG@10": float(v)} for i, v in enumerate(rng.uniform(0, 1, 120))}
    better = {q: {"nDCG@10": v["nDCG@10"] + float(d)} for (q, v), d in zip(base.items(), rng.normal(0.05, 0.1, 120))}
    low, high = delta_ci(better, base)
    diff = np.array([better[q]["nDCG@10"] - base[q]["nDCG@10"] for q in sorted(base)])
    draws = np.random.default_rng(11).integers(0, len(diff), (20_000, len(diff)))
    means = diff[draws].mean(axis=1)
    assert abs(low - np.quantile(means, 0.025)) < 0.004
    assert abs(high - np.quantile(means, 0.975)) < 0.004
    assert 0 < low < diff.mean() < high
    lo2, hi2 = delta_ci(base, better)  # the other way round: the mirror image, below 0
    assert hi2 < 0 and abs(lo2 + high) < 0.004


def test_delta_ci_errors_and_ties() -> None:
    from lethe.pipelines.evaluate import delta_ci

    a = {"q1": {"nDCG@10": 0.5}, "q2": {"nDCG@10": 0.7}}
    assert delta_ci(a, a) == (0.0, 0.0)
    with pytest.raises(LetheError, match="same queries"):
        delta_ci(a, {"q1": {"nDCG@10": 0.5}})
    with pytest.raises(LetheError, match="at least 2"):
        delta_ci({"q1": {"nDCG@10": 0.5}}, {"q1": {"nDCG@10": 0.4}})
