"""Choosing a collection's reranker on tuning queries (lethe.pipelines.choose, `lethe choose-reranker`,
`lethe eval --rerank auto`) on a tiny BEIR directory with a dev split and a tiny random LLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lethe.cli import app
from lethe.errors import LetheError
from lethe.pipelines.choose import RerankerSpec, choose_reranker, chosen_reranker, trained_queries, tuning_queries
from tests.conftest import TEXTS, make_docs, make_queries
from tests.test_cli import invoke, runner, write_beir

DEV = {"q4": "staking rewards epoch", "q5": "bone health vitamin", "q6": "ledger hash chain",
       "q7": "dense vectors retrieval", "q8": "fox dog"}
DEV_QRELS = [("q4", "d2"), ("q5", "d5"), ("q6", "d11"), ("q7", "d9"), ("q8", "d0")]


def write_dev(root: Path) -> Path:
    """The tiny BEIR directory plus five queries judged in a ``dev`` split."""
    write_beir(root)
    with open(root / "queries.jsonl", "a") as fh:
        for q, text in DEV.items():
            fh.write(json.dumps({"_id": q, "text": text}) + "\n")
    lines = "".join(f"{q}\t{d}\t1\n" for q, d in DEV_QRELS)
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + lines)
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    from lethe.pipelines.workspace import Workspace
    from lethe.registry import Lineage, ModelSpec
    from lethe.registry.testing import build_tiny_llama

    llm_dir = build_tiny_llama(tmp_path / "llm", TEXTS * 3, max_positions=2048)
    home = tmp_path / "home"
    with Workspace(home, show_progress=False) as ws:
        base = ws.registry.register(ModelSpec(name="tiny-llm", kind="llm", source=f"path:{llm_dir}"))
        # a "trained" copy that saw q4 (its lineage), grown from the base
        ws.registry.register(ModelSpec(name="tuned-llm", kind="llm", source=f"path:{llm_dir}"),
                             lineage=Lineage(query_ids=["q4"]), parents={"base": base})
        ws.store.ingest(make_docs(), make_queries())
        ws.build_bm25()
    return home


def test_specs_parse_and_print() -> None:
    assert RerankerSpec.parse("none") == RerankerSpec(None)
    assert RerankerSpec.parse("smollm2:qlm:query") == RerankerSpec("smollm2", "qlm", "query")
    assert str(RerankerSpec.parse("cross-encoder@v2")) == "cross-encoder@v2"
    assert str(RerankerSpec.parse("smollm2:qlm:query")) == "smollm2:qlm:query"
    for bad, why in (("smollm2:diagonal", "mode"), ("smollm2:qlm:tail", "view"), (":qlm", "NAME"),
                     ("a:qlm:head:x", "NAME")):
        with pytest.raises(LetheError, match=why):
            RerankerSpec.parse(bad)


def test_tuning_queries_leave_out_what_a_candidate_trained_on_and_refuse_test(tmp_path: Path, home: Path) -> None:
    from lethe.data import load_dataset
    from lethe.pipelines.workspace import Workspace

    ds = load_dataset(write_dev(tmp_path / "tiny"))
    with Workspace(home, show_progress=False) as ws:
        assert trained_queries(ws, "tuned-llm") == {"q4"} and trained_queries(ws, "tiny-llm") == set()
        untrained = [RerankerSpec("tiny-llm", "qlm")]
        assert tuning_queries(ws, ds, untrained, "dev", 0) == sorted(DEV)
        both = [*untrained, RerankerSpec("tuned-llm", "qlm")]
        assert tuning_queries(ws, ds, both, "dev", 0) == sorted(set(DEV) - {"q4"})
        assert len(tuning_queries(ws, ds, untrained, "dev", 3)) == 3
        with pytest.raises(LetheError, match="test split"):
            tuning_queries(ws, ds, untrained, "test", 0)
        from lethe.pipelines.forget import forget
        from lethe.types import ForgetRequest, Query

        ws.store.ingest([], [Query("q5", DEV["q5"], ("u42",))])      # a user's own query, then the user goes
        assert forget(ws, ForgetRequest(owners=("u42",))).reached
        assert tuning_queries(ws, ds, untrained, "dev", 0) == sorted(set(DEV) - {"q5"})


def test_choice_is_the_best_on_dev_and_eval_auto_uses_it(tmp_path: Path, home: Path) -> None:
    from lethe.data import load_dataset
    from lethe.pipelines.workspace import Workspace

    data = write_dev(tmp_path / "tiny")
    with Workspace(home, show_progress=False) as ws:
        with pytest.raises(LetheError, match="choose-reranker"):
            chosen_reranker(ws)
        specs = [RerankerSpec.parse(s) for s in ("tiny-llm:qlm:head", "tiny-llm:qlm:query", "tiny-llm:first_token")]
        choice = choose_reranker(ws, load_dataset(data), specs, queries=0, depth=5)
    assert choice.split == "dev" and choice.queries == len(DEV) and set(choice.ndcg10) == {str(s) for s in specs}
    scores = {"none": choice.first_stage, **choice.ndcg10}
    assert scores[choice.chosen] == max(scores.values())                      # the best on dev, none included
    assert all(lo <= v - choice.first_stage <= hi for v, (lo, hi) in
               ((choice.ndcg10[k], choice.delta_ci[k]) for k in choice.ndcg10))
    out = invoke("eval", "--data", str(data), "--home", str(home), "--rerank", "auto", "--depth", "5",
                 "--out", str(tmp_path / "runs")).output
    if choice.chosen == "none":
        assert "bm25 on tiny/test" in out
    else:
        assert f"bm25 >> {choice.chosen}" in out and "calls_per_query" in out


def test_cli_records_none_when_nothing_beats_the_first_stage(tmp_path: Path, home: Path) -> None:
    from lethe.pipelines.workspace import Workspace

    data = write_dev(tmp_path / "tiny")
    out = invoke("choose-reranker", "--data", str(data), "--home", str(home), "--candidates", "none",
                 "--depth", "5").output
    assert "5 tuning queries" in out and "chosen: none" in out
    with Workspace(home, show_progress=False) as ws:
        assert chosen_reranker(ws) == RerankerSpec(None)
        pipe = ws.retriever("bm25") >> ws.reranker("auto")                     # no reranker: the first stage
        assert str(pipe) == str(ws.retriever("bm25"))
    result = invoke("eval", "--data", str(data), "--home", str(home), "--rerank", "auto", "--out",
                    str(tmp_path / "runs"))
    assert "first stage is evaluated as it is" in result.output
    bad = runner.invoke(app, ["choose-reranker", "--data", str(data), "--home", str(home), "--candidates",
                              "tiny-llm:qlm", "--split", "test"])
    assert bad.exit_code != 0 and "test split" in str(bad.exception)
