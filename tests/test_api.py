"""The front door: ``import lethe``, ``Workspace.open``, pipelines with ``%`` / ``>>``, typed receipts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lethe
from lethe.errors import LetheError
from lethe.pipeline import Pipeline, Result
from lethe.types import Hit
from tests.test_cli import write_beir


class Reverse:
    """A reranker that reverses its candidates (the order a test can see)."""

    version = "reverse@v1"

    def rerank(self, query: str, hits: list[Hit], k: int | None = None) -> list[Hit]:
        return list(reversed(hits))[:k]


@pytest.fixture
def opened(tmp_path: Path, tiny_bert_dir: Path):  # noqa: ANN201
    from lethe.registry import ModelSpec

    data = write_beir(tmp_path / "tiny")
    shutil.copytree(tiny_bert_dir, tmp_path / "tiny-model")
    with lethe.Workspace(tmp_path / "home", show_progress=False) as ws:
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{tmp_path / 'tiny-model'}"))
    ws = lethe.Workspace.open(tmp_path / "home", data=data, encoder="tiny", show_progress=False)
    yield ws
    ws.close()


def test_import_lethe_is_cheap_and_names_the_front_door() -> None:
    code = "import sys, lethe; assert 'torch' not in sys.modules; print(lethe.Workspace.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "Workspace"
    with pytest.raises(AttributeError):
        lethe.nothing_here  # noqa: B018


def test_open_ingests_and_indexes_once(opened) -> None:  # noqa: ANN001
    names = {i.ref.name for i in opened.indexes()}
    assert {"bm25", "dense"} <= names and len(opened.store.ids()) == 12
    again = lethe.Workspace.open(opened.home, data=opened.dataset, encoder="tiny", show_progress=False)
    try:
        assert {i.ref.name: i.ref.version for i in again.indexes()} == {i.ref.name: i.ref.version
                                                                     for i in opened.indexes()}
    finally:
        again.close()


def test_pipeline_operators_compose_and_print(opened) -> None:  # noqa: ANN001
    pipe = opened.retriever("rrf") % 3 >> Reverse()
    assert isinstance(pipe, Pipeline)
    assert str(pipe) == "rrf(bm25, dense) % 3 >> Reverse(reverse@v1)"
    first = opened.retriever("rrf").search(["cardano staking rewards"], 3)[0]
    hits = pipe.search("cardano staking rewards", k=2)
    assert all(isinstance(h, Result) for h in hits)
    assert [h.doc_id for h in hits] == [h.doc_id for h in reversed(first)][:2]  # the top 3, reversed, cut to 2
    assert hits[0].title.startswith("title ")
    assert len(pipe.search(["fox", "vitamin"], k=2)) == 2  # a list of queries: one list of hits each
    with pytest.raises(LetheError, match="positive integer"):
        opened.retriever("bm25") % 0  # noqa: B018
    with pytest.raises(LetheError, match="no rerank"):
        opened.retriever("bm25") >> 3  # noqa: B018


def test_evaluate_returns_the_named_measures(opened) -> None:  # noqa: ANN001
    figs = lethe.evaluate(opened.retriever("bm25"), opened.dataset, "nDCG@10 R@100")
    assert set(figs) == {"nDCG@10", "R@100"} and 0 <= figs["nDCG@10"] <= 1
    with pytest.raises(LetheError, match="no qrels split"):
        lethe.evaluate(opened.retriever("bm25"), opened.dataset, "nDCG@10", split="dev")


def test_forget_and_verify_are_typed(opened) -> None:  # noqa: ANN001
    receipt = opened.forget(owners=["u2"], reason="request")
    assert isinstance(receipt, lethe.Receipt)
    assert receipt.level == "deleted" and receipt.reached and receipt.verification.all_passed
    assert receipt.model_level == "no model saw the data" and receipt.models == ()
    result = opened.verify()
    assert isinstance(result, lethe.VerifyResult) and result.ok and result.problems == ()
    assert "d1" not in opened.store.ids()


def test_a_crashed_forget_resumes_and_retries_through_the_front_door(opened) -> None:  # noqa: ANN001
    from lethe.pipelines.forget import InjectedCrash

    with pytest.raises(InjectedCrash):
        opened.forget(doc_ids=["d1"], reason="request", crash_after="store")
    assert not opened.verify(trace=False).ok  # a pending request is a problem until it is finished
    (receipt,) = opened.resume_forgets()
    assert isinstance(receipt, lethe.Receipt) and receipt.level == "deleted" and receipt.reached
    again = opened.retry_forget(receipt.request_id)
    assert again.noop and again.request_id == receipt.request_id and again.level == "deleted"
    assert opened.resume_forgets() == [] and opened.verify().ok
