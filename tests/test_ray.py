"""``lethe index --ray``: Ray Data builds equal single-process builds; a bad Ray address fails before any write.

Slow (a local Ray of two CPUs starts once per module, and its encoder actors import torch), so marked
``slow``; skipped when Ray is not installed (``pip install 'lethe-ir[ray]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lethe.errors import LetheError
from lethe.pipelines.forget import rebuild_like
from lethe.pipelines.workspace import Workspace
from lethe.registry import ModelSpec
from lethe.retrieval.bm25 import BM25Index
from lethe.retrieval.dense import DenseIndex
from tests.conftest import make_docs, make_home, make_queries
from tests.test_cli import invoke, write_beir

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

UNREACHABLE = "127.0.0.1:1"


@pytest.fixture(scope="module")
def ray_bulk() -> Iterator:
    """A local Ray of 2 CPUs started by lethe (batches of 5 documents, so both actors get work)."""
    import ray

    from lethe.pipelines.bulk import RayBulk

    with RayBulk(num_cpus=2, actors=2, batch_size=5) as bulk:
        yield bulk
    assert not ray.is_initialized()  # lethe started it, so lethe shut it down


def indexes(home: Path) -> tuple[BM25Index, DenseIndex]:
    with Workspace(home, show_progress=False, create=False) as ws:
        return BM25Index.load(ws.index_path("bm25")), DenseIndex.load(ws.index_path("dense"))


def assert_same_indexes(home_a: Path, home_b: Path) -> None:
    """Same ids, same BM25 statistics and state, same vectors (within 1e-5)."""
    bm25_a, dense_a = indexes(home_a)
    bm25_b, dense_b = indexes(home_b)
    assert bm25_a.doc_ids == bm25_b.doc_ids and bm25_a.stats() == bm25_b.stats()
    assert bm25_a.fingerprint() == bm25_b.fingerprint()
    assert dense_a.order == dense_b.order and dense_a.params() == dense_b.params()
    np.testing.assert_allclose(dense_a.vectors(), dense_b.vectors(), rtol=0, atol=1e-5)


def test_ray_build_equals_single_process(tmp_path: Path, tiny_bert_dir: Path, ray_bulk,  # noqa: ANN001
                                         monkeypatch) -> None:  # noqa: ANN001
    single = make_home(tmp_path, tiny_bert_dir, "single")
    encoded: list[int] = []
    encode = ray_bulk.encode
    monkeypatch.setattr(ray_bulk, "encode", lambda enc, texts: encoded.append(len(texts)) or encode(enc, texts))
    with Workspace(tmp_path / "ray", show_progress=False) as ws:
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{tmp_path / 'tiny-model'}"))
        ws.store.ingest(make_docs(), make_queries())
        ws.build_bm25(tokenize=ray_bulk.tokenize)
        dense = ws.build_dense(encoder="tiny", doc_encoder=ray_bulk.document_encoder)
        assert dense.encoder is ws.encoder("tiny")  # the index keeps the local encoder, not the Ray stand-in
        assert encoded == [len(make_docs())]  # every document was encoded on Ray, in one pass
        assert len(ws.cache) == len(make_docs())  # and the vectors went through the embedding cache,
        assert dense.fingerprint() == rebuild_like(ws, dense).fingerprint()  # which verification's rebuild reads
        lineage = {i.ref.name: ws.registry.lineage_of(i.ref).doc_ids for i in ws.indexes()}
    assert_same_indexes(single, tmp_path / "ray")
    with Workspace(single, show_progress=False, create=False) as ws:
        assert lineage == {i.ref.name: ws.registry.lineage_of(i.ref).doc_ids for i in ws.indexes()}


def test_cli_rebuild_with_ray(tmp_path: Path, tiny_bert_dir: Path, ray_bulk) -> None:  # noqa: ANN001
    single = make_home(tmp_path, tiny_bert_dir, "single")
    home = make_home(tmp_path, tiny_bert_dir, "ray")
    with Workspace(home, show_progress=False, create=False) as ws:
        ws.cache.purge_model(ws.encoder("tiny").version)  # so the rebuild encodes on Ray
    out = invoke("index", "--home", str(home), "--ray").output  # uses the running Ray session, leaves it running
    assert "rebuilt indexes ['bm25', 'dense']" in out
    assert_same_indexes(single, home)
    with Workspace(home, show_progress=False, create=False) as ws:
        assert len(ws.cache) == len(make_docs())


def test_unreachable_ray_address_fails_before_any_write(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from lethe.cli import main
    from lethe.pipelines.bulk import RayBulk

    data, home = write_beir(tmp_path / "tiny"), tmp_path / "home"
    for extra in (["--ray", "--ray-address", UNREACHABLE], ["--ray-address", UNREACHABLE]):
        argv = ["lethe", "index", "--data", str(data), "--home", str(home), "--no-dense", *extra]
        monkeypatch.setattr("sys.argv", argv)
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        assert not home.exists()
    err = capsys.readouterr().err
    assert f"cannot reach the Ray cluster at '{UNREACHABLE}'" in err and "--ray-address needs --ray" in err
    with pytest.raises(LetheError, match=UNREACHABLE):
        RayBulk(address=UNREACHABLE).start()
