"""Milvus backend (Milvus Lite): same results as FAISS flat, exact deletion, save/load, the forget flow."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

import pyarrow as pa  # noqa: E402  (a dependency of milvus-lite)
import pyarrow.parquet as pq  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lethe.cli import app  # noqa: E402
from lethe.errors import LetheError  # noqa: E402
from lethe.retrieval.dense import DenseIndex  # noqa: E402
from lethe.retrieval.milvus import MilvusIndex, check_uri  # noqa: E402
from lethe.types import Hit  # noqa: E402
from tests.conftest import make_docs, make_queries  # noqa: E402
from tests.test_cli import write_beir  # noqa: E402

UNREACHABLE = "http://127.0.0.1:1"


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def ids_of(n: int) -> list[str]:
    ids = [f"d{i}" for i in range(n)]
    ids[7] = "it's \"quoted\" \\ odd"  # filter expressions must escape ids
    return ids


def pair(tmp_path: Path, ids: list[str], vecs: np.ndarray, name: str = "a") -> tuple[MilvusIndex, DenseIndex]:
    milvus = MilvusIndex(vecs.shape[1], "enc@v1", uri=str(tmp_path / f"{name}.milvus.db"), collection=f"lethe_{name}")
    milvus.add_vectors(ids, vecs)
    faiss = DenseIndex(vecs.shape[1], "flat", "enc@v1")
    faiss.add_vectors(ids, vecs)
    return milvus, faiss


def assert_same_hits(got: list[list[Hit]], want: list[list[Hit]]) -> None:
    assert [[h.doc_id for h in row] for row in got] == [[h.doc_id for h in row] for row in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)


def lite_ids(lite_dir: Path) -> set[str]:
    """Every primary key written in any parquet file of a Milvus Lite directory (live, deleted or tombstone)."""
    out: set[str] = set()
    for f in lite_dir.rglob("*.parquet"):
        table = pq.read_table(f)
        for col in table.column_names:
            if pa.types.is_string(table.schema.field(col).type):
                out.update(str(v) for v in table.column(col).to_pylist())
    return out


def test_search_equals_faiss_flat(tmp_path: Path) -> None:
    ids, vecs = ids_of(120), unit_vectors(120)
    milvus, faiss = pair(tmp_path, ids, vecs)
    q = unit_vectors(8, seed=1)
    assert_same_hits(milvus.search_vectors(q, 10), faiss.search_vectors(q, 10))
    assert milvus.fingerprint() == faiss.fingerprint() and len(milvus) == 120
    np.testing.assert_array_equal(milvus.vectors(ids[:9]), faiss.vectors(ids[:9]))
    assert ids[7] in milvus and "nope" not in milvus
    assert milvus.params()["backend"] == "milvus" and milvus.exactness()["exact"]


def test_delete_is_absent_and_equals_rebuild(tmp_path: Path) -> None:
    ids, vecs = ids_of(120), unit_vectors(120)
    milvus, faiss = pair(tmp_path, ids, vecs)
    gone = ["d3", ids[7], "d119"]
    assert milvus.delete(gone + ["unknown"]) == 3 and len(milvus) == 117
    faiss.delete(gone)
    client = milvus.client()
    for d in gone:
        assert d not in milvus
        if "'" not in d:  # pymilvus' get() does not escape quotes
            assert len(client.get(milvus.collection, ids=[d])) == 0
        own = milvus.search_vectors(vecs[[ids.index(d)]], 10)[0]
        assert d not in {h.doc_id for h in own}
    keep = [i for i, d in enumerate(ids) if d not in gone]
    fresh = MilvusIndex(16, "enc@v1", uri=str(tmp_path / "fresh.milvus.db"), collection="lethe_fresh")
    fresh.add_vectors([ids[i] for i in keep], vecs[keep])
    assert milvus.fingerprint() == fresh.fingerprint() == faiss.fingerprint()
    q = np.vstack([vecs[[3, 7, 50]], unit_vectors(5, seed=2)])
    assert_same_hits(milvus.search_vectors(q, 10), fresh.search_vectors(q, 10))
    assert_same_hits(milvus.search_vectors(q, 10), faiss.search_vectors(q, 10))
    milvus.add_vectors(["d3"], vecs[[3]])  # a deleted id can come back (replacing a document does this)
    assert "d3" in milvus and milvus.search_vectors(vecs[[3]], 1)[0][0].doc_id == "d3"


def test_save_load_and_no_deleted_row_left(tmp_path: Path) -> None:
    ids, vecs = ids_of(60), unit_vectors(60)
    milvus, faiss = pair(tmp_path, ids, vecs)
    milvus.delete(["d5", "d6"])
    faiss.delete(["d5", "d6"])
    lite = tmp_path / "a.milvus.db"
    assert {"d5", "d6"} <= lite_ids(lite)  # Milvus Lite keeps the row and a tombstone until the rewrite
    path = tmp_path / "indexes" / "dense.npz"
    milvus.save(path)
    assert not {"d5", "d6"} & lite_ids(lite) and lite_ids(lite) == set(milvus.order)
    assert not list(lite.rglob("delta_*"))
    q = unit_vectors(6, seed=3)
    again = MilvusIndex.load(path)
    assert again.order == milvus.order and again.collection == milvus.collection
    assert again.fingerprint() == faiss.fingerprint()
    assert_same_hits(again.search_vectors(q, 10), milvus.search_vectors(q, 10))
    assert_same_hits(again.search_vectors(q, 10), faiss.search_vectors(q, 10))


def milvus_docs() -> tuple[list, list[str]]:
    """The test documents with ids of 8+ characters (a byte scan would see one left), and two to forget."""
    return [dataclasses.replace(d, id=f"document-{d.id}") for d in make_docs()], ["document-d2", "document-d4"]


def milvus_workspace(tmp_path: Path, tiny_bert_dir: Path, docs: list):  # noqa: ANN201
    """A workspace (to use as a context) holding ``docs`` with BM25 and a Milvus Lite dense index of a tiny model."""
    from lethe.pipelines.workspace import Workspace
    from lethe.registry import ModelSpec

    shutil.copytree(tiny_bert_dir, tmp_path / "tiny")
    ws = Workspace(tmp_path / "home", show_progress=False)
    try:
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{tmp_path / 'tiny'}"))
        ws.store.ingest(docs, make_queries())
        ws.build_bm25()
        ws.build_dense(encoder="tiny", backend="milvus")
    except BaseException:
        ws.close()
        raise
    return ws


def test_workspace_forget_and_verify(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """Ids of 8+ characters, so the byte scan of ``verify`` would see one left in raw bytes (a Milvus Lite
    tombstone names it in clear); the parquet check below also reads the compressed rows it cannot see."""
    docs, forgotten = milvus_docs()
    with milvus_workspace(tmp_path, tiny_bert_dir, docs) as ws:
        assert ws.registry.get("dense").manifest["params"]["backend"] == "milvus"
        index = ws.load_index("dense")
        assert isinstance(index, MilvusIndex) and len(index) == 12
        before = index.search(["cardano staking rewards"], 3)[0]
        assert before and before[0].doc_id in {d.id for d in docs}
        receipt = ws.forget(doc_ids=forgotten, reason="test")
        assert receipt.level == "deleted"
        result = ws.verify()
        assert result.ok and not result.trace_found, result.problems
        index = ws.load_index("dense")
        assert not any(d in index for d in forgotten) and len(index) == 10
        assert not set(forgotten) & lite_ids(ws.milvus_lite_path("dense"))
        files = [f for f in ws.milvus_lite_path("dense").rglob("*") if f.is_file()]
        assert not [f for f in files if any(d.encode() in f.read_bytes() for d in forgotten)]
        assert not list(ws.milvus_lite_path("dense").rglob("delta_*"))
        fingerprint = index.fingerprint()
        assert set(ws.rebuild_indexes()) == {"bm25", "dense"}  # a new collection; the old one is dropped
        rebuilt = ws.load_index("dense")
        assert isinstance(rebuilt, MilvusIndex) and rebuilt.fingerprint() == fingerprint
        assert [p.name for p in (ws.milvus_lite_path("dense") / "collections").iterdir()] == [rebuilt.collection]
        assert isinstance(ws.build_dense(encoder="tiny"), DenseIndex)  # back to FAISS: the Lite directory goes
        assert not ws.milvus_lite_path("dense").exists() and ws.verify().ok


@pytest.mark.parametrize("step", ["resolve", "store", "index:bm25", "index:dense", "cache", "verify", "scrub"])
def test_crash_during_a_milvus_backed_forget_resumes(tmp_path: Path, tiny_bert_dir: Path, step: str) -> None:
    """A crash after any journal step of a forget on a Milvus-backed index resumes to the same end state."""
    from lethe.pipelines.forget import InjectedCrash
    from lethe.pipelines.workspace import Workspace

    docs, forgotten = milvus_docs()
    with milvus_workspace(tmp_path, tiny_bert_dir, docs) as ws, pytest.raises(InjectedCrash):
        ws.forget(doc_ids=forgotten, reason="test", crash_after=step)
    with Workspace(tmp_path / "home", show_progress=False) as ws:  # a new process would open it afresh
        (receipt,) = ws.resume_forgets()
        assert receipt.level == "deleted" and receipt.reached
        result = ws.verify()
        assert result.ok and not result.trace_found, result.problems
        index = ws.load_index("dense")
        assert isinstance(index, MilvusIndex) and len(index) == 10
        assert not any(d in index for d in forgotten)
        assert not set(forgotten) & lite_ids(ws.milvus_lite_path("dense"))


def test_unreachable_uri_is_a_clear_error_before_any_write(tmp_path: Path) -> None:
    with pytest.raises(LetheError, match="127.0.0.1:1"):
        check_uri(UNREACHABLE)
    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["index", "--data", str(write_beir(tmp_path / "beir")), "--home", str(home),
                                      "--dense-backend", "milvus", "--milvus-uri", UNREACHABLE])
    assert result.exit_code != 0 and isinstance(result.exception, LetheError)
    assert UNREACHABLE in str(result.exception) or "127.0.0.1:1" in str(result.exception)
    assert not home.exists()
    with pytest.raises(LetheError, match="--dense-backend milvus"):
        CliRunner().invoke(app, ["index", "--data", "x", "--home", str(home), "--milvus-uri", UNREACHABLE],
                           catch_exceptions=False)
