"""Dense index: FAISS deletion in the FAISS test shape, rebuild equality, cache, registry models."""

from __future__ import annotations

import numpy as np
import pytest

from lethe.embedding import EmbeddingCache
from lethe.errors import IndexError_
from lethe.retrieval.dense import DenseIndex, int_id
from lethe.types import Doc


def unit_vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build(kind: str, ids: list[str], vecs: np.ndarray) -> DenseIndex:
    index = DenseIndex(vecs.shape[1], kind, "enc@v1", nlist=4 if kind == "ivf" else None, nprobe=4)
    index.add_vectors(ids, vecs)
    return index


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_delete_removes_vectors_and_equals_rebuild(kind: str) -> None:
    ids = [f"d{i}" for i in range(200)]
    vecs = unit_vectors(200)
    index = build(kind, ids, vecs)
    gone = ["d3", "d50", "d199"]
    ntotal = index.index.ntotal
    assert index.delete(gone + ["unknown"]) == 3
    assert index.index.ntotal == ntotal - 3 and len(index) == 197
    for d in gone:
        assert d not in index
        hits = index.search_vectors(vecs[[int(d[1:])]], 10)[0]
        assert d not in {h.doc_id for h in hits}
        with pytest.raises(RuntimeError):
            index.index.reconstruct(int_id(d))
    if kind == "ivf":
        report = index.exactness()
        assert report["exact"] is False and "retrain" in report["reason"]
        index.retrain()
    assert index.exactness()["exact"]
    keep = [i for i, d in enumerate(ids) if d not in gone]
    rebuilt = build(kind, [ids[i] for i in keep], vecs[keep])
    assert index.fingerprint() == rebuilt.fingerprint()
    q = unit_vectors(5, seed=1)
    if kind != "hnsw":  # HNSW graphs are approximate; its contract is the stored vectors above
        assert index.search_vectors(q, 10) == rebuilt.search_vectors(q, 10)


def test_flat_search_is_exact_inner_product() -> None:
    vecs = unit_vectors(50)
    index = build("flat", [f"d{i}" for i in range(50)], vecs)
    q = unit_vectors(1, seed=3)
    best = int(np.argmax(vecs @ q[0]))
    hit = index.search_vectors(q, 1)[0][0]
    assert hit.doc_id == f"d{best}" and hit.score == pytest.approx(float(vecs[best] @ q[0]), abs=1e-5)


def test_errors_are_clear() -> None:
    with pytest.raises(IndexError_, match="flat"):
        DenseIndex(8, "annoy")
    index = build("flat", ["a"], unit_vectors(1))
    with pytest.raises(IndexError_, match="already"):
        index.add_vectors(["a"], unit_vectors(1))
    with pytest.raises(IndexError_, match="dim"):
        index.add_vectors(["b"], unit_vectors(1, dim=4))
    with pytest.raises(IndexError_, match="at least"):
        DenseIndex(16, "ivf", nlist=64).add_vectors(["x", "y"], unit_vectors(2))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_roundtrip(tmp_path, kind: str) -> None:
    ids = [f"d{i}" for i in range(100)]
    index = build(kind, ids, unit_vectors(100))
    index.delete(["d7"])
    index.save(tmp_path / "dense.npz")
    loaded = DenseIndex.load(tmp_path / "dense.npz")
    assert loaded.fingerprint() == index.fingerprint()
    assert loaded.exactness() == index.exactness()
    q = unit_vectors(3, seed=2)
    assert loaded.search_vectors(q, 5) == index.search_vectors(q, 5)


class CountingEncoder:
    """A deterministic fake encoder that counts how many texts it encoded."""

    def __init__(self, version: str = "fake@v1") -> None:
        self.version, self.calls = version, 0

    def _enc(self, texts) -> np.ndarray:  # noqa: ANN001
        self.calls += len(texts)
        out = np.stack([unit_vectors(1, seed=sum(map(ord, t)))[0] for t in texts]) if texts else np.zeros((0, 16))
        return out.astype(np.float32)

    def encode_documents(self, texts, show_progress: bool = False) -> np.ndarray:  # noqa: ANN001
        return self._enc(list(texts))

    def encode_queries(self, texts, show_progress: bool = False) -> np.ndarray:  # noqa: ANN001
        return self._enc(list(texts))


def test_cache_avoids_reencoding_and_purge_forgets(tmp_path, docs: list[Doc]) -> None:
    cache = EmbeddingCache(tmp_path / "emb.db")
    enc = CountingEncoder()
    first = DenseIndex.build(docs, enc, cache=cache, show_progress=False)
    assert enc.calls == len(docs) + 1  # + the dimension probe
    enc.calls = 0
    second = DenseIndex.build(docs, enc, cache=cache, show_progress=False)
    assert enc.calls == 1 and second.fingerprint() == first.fingerprint()
    other = CountingEncoder("fake@v2")  # a new model version never reuses the old vectors
    DenseIndex.build(docs[:2], other, cache=cache, show_progress=False)
    assert other.calls == 3
    from lethe.store import content_hash

    h = content_hash(docs[0])
    assert cache.contains_hash(h)
    assert cache.purge([h]) == 2  # both model versions
    assert not cache.contains_hash(h)


def test_attach_refuses_another_encoder_version(docs: list[Doc]) -> None:
    index = DenseIndex.build(docs, CountingEncoder(), show_progress=False)
    with pytest.raises(IndexError_, match="rebuild"):
        index.attach(CountingEncoder("fake@v2"))


def test_registry_model_encodes_and_searches(workspace) -> None:
    index = workspace.load_index("dense")
    assert len(index) == 12 and index.encoder_version == "tiny@v1"
    hits = index.search(["cardano staking pools distribute rewards every epoch"], 3)[0]
    assert len(hits) == 3
    assert hits[0].doc_id == "d2"  # a document is its own nearest neighbour
