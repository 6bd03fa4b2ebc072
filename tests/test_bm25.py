"""BM25: agreement with rank_bm25 / bm25s, exact deletion (property-based), persistence."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lethe.errors import IndexError_
from lethe.retrieval.analysis import Analyzer
from lethe.retrieval.bm25 import BM25Index
from lethe.types import Doc

VOCAB = [f"t{i}" for i in range(25)]
BACKENDS = ["numpy", "numba"]


def random_corpus(seed: int, n: int = 40) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    toks = [[rng.choice(VOCAB[: rng.randint(3, 25)]) for _ in range(rng.randint(1, 20))] for _ in range(n)]
    return [f"doc{i}" for i in range(n)], toks


@pytest.mark.parametrize("seed", range(5))
def test_okapi_matches_rank_bm25(seed: int) -> None:
    from rank_bm25 import BM25Okapi

    ids, toks = random_corpus(seed)
    index = BM25Index("okapi")
    index.add_tokens(ids, toks)
    ref = BM25Okapi(toks)
    for q in (["t1", "t2"], ["t0", "t0", "t7"], ["t3", "nothere"], VOCAB[:10]):
        np.testing.assert_allclose(index.score_tokens(q), ref.get_scores(q), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_lucene_matches_bm25s(seed: int) -> None:
    import bm25s

    ids, toks = random_corpus(seed)
    index = BM25Index("lucene")
    index.add_tokens(ids, toks)
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(toks, show_progress=False)
    for q in (["t1", "t2"], ["t0", "t0", "t7"], ["t3"], VOCAB[:10]):
        np.testing.assert_allclose(index.score_tokens(q), ref.get_scores(q), rtol=1e-5, atol=1e-5)


def test_analyzer_matches_bm25s_tokenizer() -> None:
    import bm25s
    import Stemmer

    texts = ["The Running dogs, and the runner's 42 shoes!", "Vitamin-D & bone: is it a myth?"]
    ours = [Analyzer()(t) for t in texts]
    ref = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                         show_progress=False)
    assert ours == [list(r) for r in ref]


def assert_same_index(a: BM25Index, b: BM25Index, queries: list[list[str]], k: int = 10) -> None:
    """Indistinguishable: N, df, avgdl, fingerprint, every query's top-k ids and scores."""
    assert len(a) == len(b)
    assert a.stats()["df"] == b.stats()["df"]
    assert a.avgdl == pytest.approx(b.avgdl, abs=1e-12)
    assert a.fingerprint() == b.fingerprint()
    for q in queries:
        ha, hb = a.search_tokens(q, k), b.search_tokens(q, k)
        assert [h.doc_id for h in ha] == [h.doc_id for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], rtol=1e-9, atol=1e-9)


ops = st.lists(st.tuples(st.sampled_from(["add", "delete"]), st.integers(0, 10_000)), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), ops=ops, variant=st.sampled_from(["lucene", "okapi"]),
       backend=st.sampled_from(BACKENDS))
def test_delete_equals_rebuild(seed: int, n: int, ops: list[tuple[str, int]], variant: str, backend: str) -> None:
    rng = random.Random(seed)
    all_ids, all_toks = random_corpus(seed, n + 20)
    pool = dict(zip(all_ids, all_toks))
    index = BM25Index(variant, backend=backend)
    live: list[str] = all_ids[:n]
    index.add_tokens(live, [pool[d] for d in live])
    fresh = iter(all_ids[n:])
    for op, r in ops:
        if op == "add":
            new = [d for d in (next(fresh, None) for _ in range(1 + r % 3)) if d]
            if new:
                index.add_tokens(new, [pool[d] for d in new])
                live += new
        elif live:
            gone = set(rng.sample(live, 1 + r % min(len(live), 4)))
            assert index.delete(gone | {"never-indexed"}) == len(gone)
            live = [d for d in live if d not in gone]
    rebuilt = BM25Index(variant, backend=backend)
    if live:
        rebuilt.add_tokens(live, [pool[d] for d in live])
    queries = [rng.sample(VOCAB, 3) for _ in range(5)] + [VOCAB]
    assert_same_index(index, rebuilt, queries, k=rng.randint(1, 15))


def test_delete_forgets_terms_only_the_document_had() -> None:
    index = BM25Index()
    index.add([Doc("a", "zebracorn grazes"), Doc("b", "horses graze")])
    assert "zebracorn" in index.vocab
    index.delete(["a"])
    assert "zebracorn" not in index.vocab
    assert index.search(["zebracorn"], 5) == [[]]
    assert "a" not in index and len(index) == 1
    assert index.delete(["a"]) == 0


def test_add_is_incremental_and_refuses_duplicates(docs: list[Doc]) -> None:
    one, two = BM25Index(), BM25Index()
    one.add(docs[:5])
    one.add(docs[5:])
    two.add(docs)
    assert one.fingerprint() == two.fingerprint()
    with pytest.raises(IndexError_, match="already indexed"):
        one.add(docs[:1])


def test_save_load_roundtrip_is_atomic(tmp_path, docs: list[Doc]) -> None:
    index = BM25Index("okapi", k1=1.2, b=0.6)
    index.add(docs)
    index.delete(["d3"])
    path = tmp_path / "bm25.npz"
    index.save(path)
    loaded = BM25Index.load(path)
    assert loaded.fingerprint() == index.fingerprint()
    assert loaded.search(["cardano rewards"], 3) == index.search(["cardano rewards"], 3)
    assert [p.name for p in tmp_path.iterdir()] == ["bm25.npz"]  # no temp file left behind

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("disk full")

    before = path.read_bytes()
    monkey = pytest.MonkeyPatch()
    monkey.setattr(np, "savez", boom)
    try:
        with pytest.raises(RuntimeError):
            BM25Index().save(path)
    finally:
        monkey.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bm25.npz"]


def test_load_rejects_garbage(tmp_path) -> None:
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not an index")
    with pytest.raises(IndexError_, match="not a lethe BM25 index"):
        BM25Index.load(bad)


def test_unknown_variant_lists_choices() -> None:
    with pytest.raises(IndexError_, match="lucene"):
        BM25Index("bm42")


def test_ties_break_by_insertion_order() -> None:
    index = BM25Index(analyzer=Analyzer(stemmer=None))
    index.add([Doc("b", "same words"), Doc("a", "same words"), Doc("c", "other")])
    assert [h.doc_id for h in index.search(["same"], 2)[0]] == ["b", "a"]


def zipf_corpus(seed: int, n: int, vocab: int = 400) -> tuple[list[str], list[list[str]]]:
    """Documents over a Zipf-like vocabulary: common terms (negative okapi idf) and rare ones (short posting lists)."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(vocab)]
    toks = [rng.choices([f"w{i}" for i in range(vocab)], weights, k=rng.randint(1, 30)) for _ in range(n)]
    return [f"z{seed}-{i}" for i in range(n)], toks


def reference_scores(variant: str, toks: list[list[str]], query: list[str]) -> np.ndarray:
    """Scores of a fresh reference index over ``toks``: rank_bm25 (okapi) or bm25s (lucene)."""
    known = {t for doc in toks for t in doc}
    query = [t for t in query if t in known]
    if not query:
        return np.zeros(len(toks))
    if variant == "okapi":
        from rank_bm25 import BM25Okapi

        return BM25Okapi(toks).get_scores(query)
    import bm25s

    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(toks, show_progress=False)
    return ref.get_scores(query)


def ranked(index: BM25Index, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The straightforward top-k: positive scores, best first, ties by index order."""
    order = sorted((i for i in range(len(scores)) if scores[i] > 0), key=lambda i: (-scores[i], i))[:k]
    return [(index.doc_ids[i], float(scores[i])) for i in order]


@pytest.mark.parametrize("variant", ["lucene", "okapi"])
@pytest.mark.parametrize("seed", range(4))
def test_search_after_deletes_matches_reference(seed: int, variant: str) -> None:
    """Search after deletes and adds: scores as a fresh reference index over the remaining
    documents gives them, and both backends return exactly the dense ranking of those scores."""
    rng = random.Random(seed)
    ids, toks = zipf_corpus(seed, 300)
    pool = dict(zip(ids, toks))
    index = BM25Index(variant)
    index.add_tokens(ids[:250], toks[:250])
    index.delete(rng.sample(ids[:250], 60))
    index.add_tokens(ids[250:], toks[250:])
    index.delete(rng.sample(index.doc_ids, 15))
    live = [pool[d] for d in index.doc_ids]
    queries = [rng.choices([f"w{i}" for i in range(400)], k=rng.randint(1, 6)) for _ in range(30)]
    queries += [["w0", "w0", "w1"], ["w399"], ["nothere"], []]
    expected = []
    for q in queries:
        dense = index.score_tokens(q)
        np.testing.assert_allclose(dense, reference_scores(variant, live, q), rtol=1e-5, atol=1e-5)
        expected.append(ranked(index, dense, 10))
    for backend in BACKENDS:
        index.backend = backend
        got = index.search_tokens_batch(queries, 10)
        assert [[(h.doc_id, h.score) for h in hits] for hits in got] == expected  # exact, scores included


@pytest.mark.parametrize("k", [0, 1, 7, 100, 1000])
def test_backends_agree_on_ties_and_sizes(k: int) -> None:
    """Many exact ties (duplicate documents: dozens in one score bucket), long and short posting
    lists, k from 0 to past N."""
    ids, toks = zipf_corpus(7, 400, vocab=60)
    ids += [f"dup{i}" for i in range(200)]
    toks += [toks[i % 5] for i in range(200)]
    rng = random.Random(1)
    queries = [rng.choices([f"w{i}" for i in range(60)], k=rng.randint(1, 8)) for _ in range(40)]
    results = {}
    for backend in BACKENDS:
        index = BM25Index("okapi", backend=backend)
        index.add_tokens(ids, toks)
        results[backend] = index.search_tokens_batch(queries, k)
        assert results[backend] == [index.search_tokens(q, k) for q in queries]
        assert results[backend] == [ranked(index, index.score_tokens(q), k) for q in queries]
    assert results["numpy"] == results["numba"]


def test_search_edge_cases() -> None:
    empty = BM25Index()
    assert empty.search(["anything"], 5) == [[]]
    index = BM25Index(analyzer=Analyzer(stemmer=None))
    index.add([Doc("a", "red fish"), Doc("b", "blue fish")])
    assert index.search(["red", "", "green"], 3) == [[index.search_tokens(["red"], 1)[0]], [], []]
    assert index.search(["fish"], 0) == [[]]
    index.delete(["a", "b"])
    assert index.search(["fish"], 3) == [[]]
    with pytest.raises(IndexError_, match="numba"):
        BM25Index(backend="cuda")


def test_works_without_numba() -> None:
    """numba is optional: without it ``auto`` searches with numpy (same hits); ``numba`` says what to install."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["numba"] = None  # makes `import numba` fail
from lethe.errors import MissingDependency
from lethe.retrieval.bm25 import BM25Index
from lethe.types import Doc
index = BM25Index()
index.add([Doc("a", "red fish"), Doc("b", "blue fish"), Doc("c", "red red car")])
print([[h.doc_id for h in hits] for hits in index.search(["red fish", "car"], 2)])
index.backend = "numba"
try:
    index.search(["red"])
except MissingDependency as exc:
    print("missing:", exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    index = BM25Index(backend="numba")
    index.add([Doc("a", "red fish"), Doc("b", "blue fish"), Doc("c", "red red car")])
    expected = [[h.doc_id for h in hits] for hits in index.search(["red fish", "car"], 2)]
    assert out.splitlines() == [str(expected), "missing: backend='numba' needs numba: pip install numba"]


def test_auto_backend_loads_numba_only_for_big_batches() -> None:
    """``auto``: a small batch does not import numba; a big one does, with the same hits as numpy."""
    import subprocess
    import sys

    script = """
import sys
from lethe.retrieval.bm25 import NUMBA_MIN_BATCH, BM25Index
from lethe.types import Doc
docs = [Doc(f"d{i}", f"term{i % 7} term{i % 11} common") for i in range(200)]
auto, plain = BM25Index(), BM25Index(backend="numpy")
auto.add(docs)
plain.add(docs)
queries = [f"term{i % 13} common" for i in range(NUMBA_MIN_BATCH)]
assert auto.search(queries[:3], 5) == plain.search(queries[:3], 5)
print("numba" in sys.modules)
assert auto.search(queries, 5) == plain.search(queries, 5)
print("numba" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_big_batches_are_scored_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from lethe.retrieval import bm25

    ids, toks = zipf_corpus(3, 200, vocab=50)
    index = BM25Index(backend="numba")
    index.add_tokens(ids, toks)
    rng = random.Random(2)
    queries = [rng.choices([f"w{i}" for i in range(60)], k=3) for _ in range(100)]
    whole = index.search_tokens_batch(queries, 10)
    monkeypatch.setattr(bm25, "KERNEL_CHUNK_HITS", 70)  # chunks of 7 queries
    assert index.search_tokens_batch(queries, 10) == whole
    assert whole == [ranked(index, index.score_tokens(q), 10) for q in queries]


# -- tombstones: deletes without compaction answer as a fresh build, bit for bit ----------------------------

def fresh_build(variant: str, ids: list[str], pool: dict[str, list[str]]) -> BM25Index:
    index = BM25Index(variant)
    if ids:
        index.add_tokens(ids, [pool[d] for d in ids])
    return index


def assert_bit_identical(a: BM25Index, b: BM25Index, queries: list[list[str]], k: int = 10) -> None:
    """Same statistics, fingerprint, dense scores (every bit) and top-k hits with both backends."""
    assert len(a) == len(b) and a.doc_ids == b.doc_ids
    assert a.stats() == b.stats()
    for q in queries:
        np.testing.assert_array_equal(a.score_tokens(q), b.score_tokens(q))
    before = a.backend, b.backend
    for backend in BACKENDS:
        a.backend = b.backend = backend
        assert a.search_tokens_batch(queries, k) == b.search_tokens_batch(queries, k)
    a.backend, b.backend = before
    assert a.fingerprint() == b.fingerprint()


def zipf_queries(seed: int, n: int = 25, vocab: int = 400) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.choices([f"w{i}" for i in range(vocab)], k=rng.randint(1, 6)) for _ in range(n)] + [["w0"], []]


@pytest.mark.parametrize("variant", ["lucene", "okapi"])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("backend", BACKENDS)
def test_tombstoned_index_is_bit_identical_to_fresh_build(seed: int, variant: str, backend: str) -> None:
    """Lazy per-term re-weighting after deletes (numba kernel or numpy) gives a fresh build's bits."""
    rng = random.Random(seed)
    ids, toks = zipf_corpus(seed, 300)
    pool = dict(zip(ids, toks))
    index = BM25Index(variant, backend=backend)
    index.add_tokens(ids, toks)
    queries = zipf_queries(seed)
    index.search_tokens_batch(queries, 10)  # weights computed before the deletes: they must go stale
    for _ in range(3):
        index.delete(rng.sample(index.doc_ids, 20))
        assert not index.alive.all()  # tombstones, not compacted
        assert_bit_identical(index, fresh_build(variant, index.doc_ids, pool), queries, k=rng.randint(1, 40))
    index.prepare()  # the all-terms re-weighting gives the same bits as the lazy one
    assert_bit_identical(index, fresh_build(variant, index.doc_ids, pool), queries)


@pytest.mark.parametrize("variant", ["lucene", "okapi"])
def test_saved_file_holds_no_deleted_document(tmp_path, variant: str) -> None:
    ids, toks = zipf_corpus(5, 120)
    ids[7], toks[7] = "secret-id-7", [*toks[7], "uniqueword"]
    pool = dict(zip(ids, toks))
    index = BM25Index(variant)
    index.add_tokens(ids, toks)
    index.delete(["secret-id-7", ids[3]])
    path = tmp_path / "bm25.npz"
    index.save(path)
    data = path.read_bytes()
    assert b"secret-id-7" not in data and b"uniqueword" not in data and ids[3].encode() + b'"' not in data
    live = [d for d in ids if d not in {"secret-id-7", ids[3]}]
    fresh = fresh_build(variant, live, pool)
    fresh_path = tmp_path / "fresh.npz"
    fresh.save(fresh_path)
    loaded = BM25Index.load(path)
    assert loaded.fingerprint() == fresh.fingerprint() == index.fingerprint()
    assert_bit_identical(loaded, fresh, zipf_queries(5))
    with np.load(path) as saved, np.load(fresh_path) as rebuilt:  # same sizes (term order may differ)
        assert {k: saved[k].shape for k in saved.files if k != "meta"} == {
            k: rebuilt[k].shape for k in rebuilt.files if k != "meta"}


ops_searching = st.lists(st.tuples(st.sampled_from(["add", "delete", "search", "compact"]), st.integers(0, 10_000)),
                         min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(0, 30), ops=ops_searching,
       variant=st.sampled_from(["lucene", "okapi"]))
def test_interleaved_add_delete_search(seed: int, n: int, ops: list[tuple[str, int]], variant: str) -> None:
    """Any sequence of adds (re-adding deleted ids too), deletes, searches and compactions answers
    every search as a fresh build over the live documents, bit for bit."""
    rng = random.Random(seed)
    all_ids, all_toks = random_corpus(seed, n + 20)
    pool = dict(zip(all_ids, all_toks))
    index = fresh_build(variant, all_ids[:n], pool)
    live = all_ids[:n]
    for op, r in ops:
        if op == "add":
            new = rng.sample([d for d in all_ids if d not in index], min(1 + r % 3, len(all_ids) - len(live)))
            index.add_tokens(new, [pool[d] for d in new])
            live += new
        elif op == "delete" and live:
            gone = set(rng.sample(live, 1 + r % min(len(live), 4)))
            assert index.delete(gone) == len(gone)
            live = [d for d in live if d not in gone]
        elif op == "compact":
            index.compact()
        else:
            queries = [rng.sample(VOCAB, 1 + r % 4) for _ in range(4)]
            index.backend = rng.choice(BACKENDS)
            expected = fresh_build(variant, live, pool).search_tokens_batch(queries, 1 + r % 12)
            assert index.search_tokens_batch(queries, 1 + r % 12) == expected
    assert_bit_identical(index, fresh_build(variant, live, pool), [VOCAB[:3], VOCAB])


def test_delete_everything_then_add_again(tmp_path) -> None:
    ids, toks = zipf_corpus(2, 50)
    index = BM25Index()
    index.add_tokens(ids, toks)
    index.search_tokens(["w0"], 5)
    assert index.delete(ids) == 50
    assert len(index) == 0 and index.doc_ids == [] and index.vocab == {} and index.avgdl == 0.0
    assert index.stats() == BM25Index().stats()
    assert index.search_tokens(["w0"], 5) == [] and index.score_tokens(["w0"]).tolist() == []
    assert index.fingerprint() == BM25Index().fingerprint()
    index.save(tmp_path / "empty.npz")
    assert BM25Index.load(tmp_path / "empty.npz").fingerprint() == BM25Index().fingerprint()
    index.add_tokens(ids[:10], toks[:10])
    assert_bit_identical(index, fresh_build("lucene", ids[:10], dict(zip(ids, toks))), zipf_queries(2))


@pytest.mark.parametrize("variant", ["lucene", "okapi"])
def test_readding_a_deleted_id(variant: str) -> None:
    index = BM25Index(variant, analyzer=Analyzer(stemmer=None))
    index.add([Doc("a", "red fish"), Doc("b", "blue fish"), Doc("c", "red car")])
    index.delete(["a"])
    index.add([Doc("a", "green fish fish")])
    fresh = BM25Index(variant, analyzer=Analyzer(stemmer=None))
    fresh.add([Doc("b", "blue fish"), Doc("c", "red car"), Doc("a", "green fish fish")])
    assert index.doc_ids == ["b", "c", "a"] and "a" in index
    assert index.search(["fish", "red", "green"], 3) == fresh.search(["fish", "red", "green"], 3)
    assert index.fingerprint() == fresh.fingerprint()


@pytest.mark.parametrize("variant", ["lucene", "okapi"])
def test_automatic_compaction_and_loaded_indexes(tmp_path, monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    """Deletes that trigger compaction, and deletes on a loaded index (forward index built from the
    postings), keep the answers of a fresh build."""
    from lethe.retrieval import bm25

    monkeypatch.setattr(bm25, "COMPACT_MIN", 0)
    rng = random.Random(4)
    ids, toks = zipf_corpus(4, 200)
    pool = dict(zip(ids, toks))
    index = fresh_build(variant, ids, pool)
    queries = zipf_queries(4)
    index.search_tokens_batch(queries, 10)
    for _ in range(4):
        index.delete(rng.sample(index.doc_ids, 40))
        assert_bit_identical(index, fresh_build(variant, index.doc_ids, pool), queries)
    assert index.alive.all()  # compacted along the way
    index.save(tmp_path / "i.npz")
    loaded = BM25Index.load(tmp_path / "i.npz")
    loaded.delete(rng.sample(loaded.doc_ids, 10))
    assert_bit_identical(loaded, fresh_build(variant, loaded.doc_ids, pool), queries)
