"""Low-level file problems raise lethe's own one-line errors naming the file, never raw exceptions."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from lethe.data import load_beir, load_corpus_jsonl, load_dataset, load_trec_run, loaders
from lethe.errors import DataError, DataErrors, DatasetNotFound, IndexError_, LetheError
from lethe.pipelines.evaluate import write_trec_run
from lethe.retrieval.bm25 import BM25Index
from lethe.retrieval.dense import DenseIndex
from lethe.types import Doc

DOCS = [Doc("a", "the quick brown fox"), Doc("b", "a lazy dog sleeps"), Doc("c", "cardano staking pools")]


# -- helpers -------------------------------------------------------------------------------------
def saved_bm25(home: Path) -> Path:
    """A small BM25 index saved where a workspace keeps it: <home>/indexes/bm25.npz."""
    index = BM25Index()
    index.add(DOCS)
    path = home / "indexes" / "bm25.npz"
    index.save(path)
    return path


def saved_dense(home: Path) -> Path:
    """A small flat dense index (vectors given, no model) saved at <home>/indexes/dense.npz."""
    index = DenseIndex(4, "flat", "enc@v1")
    index.add_vectors(["a", "b", "c"], np.eye(4, dtype=np.float32)[:3])
    path = home / "indexes" / "dense.npz"
    index.save(path)
    return path


def truncate_to_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def assert_index_error(err: pytest.ExceptionInfo[IndexError_], path: Path, what: str) -> None:
    """One line naming the file and the problem, ending with the rebuild command for its workspace."""
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    assert what in msg
    assert msg.endswith(f"rebuild it with `lethe index --home {path.parent.parent}`")


# -- index files ---------------------------------------------------------------------------------
def test_bm25_roundtrip_still_loads(tmp_path: Path) -> None:
    index = BM25Index.load(saved_bm25(tmp_path))
    assert index.doc_ids == ["a", "b", "c"] and index.search(["fox"], 1)[0][0].doc_id == "a"


def test_bm25_truncated_file(tmp_path: Path) -> None:
    path = saved_bm25(tmp_path)
    truncate_to_half(path)
    with pytest.raises(IndexError_) as err:
        BM25Index.load(path)
    assert_index_error(err, path, "corrupt or truncated index file")


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _no_meta(path: Path) -> None:
    np.savez(path, indptr=np.zeros(1, np.int64))


def _bad_meta_json(path: Path) -> None:
    np.savez(path, meta=np.frombuffer(b"{not json", dtype=np.uint8))


def _bad_params(path: Path) -> None:
    meta = {"params": {"variant": "bm42", "analyzer": {}}, "terms": [], "doc_ids": []}
    arrays = {k: np.zeros(1 if k == "indptr" else 0, np.int64) for k in ("indptr", "postings", "tf", "doc_len")}
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)


def _inconsistent_arrays(path: Path) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["doc_len"] = arrays["doc_len"][:-1]
    np.savez(path, **arrays)


def _pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"meta": "x"}))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"not an index"),
        _flip_middle_byte,
        _no_meta,
        _bad_meta_json,
        _bad_params,
        _inconsistent_arrays,
        _pickle,
    ],
    ids=["empty", "garbage", "bad-crc", "no-meta", "bad-json", "bad-params", "inconsistent", "pickle"],
)
def test_bm25_corrupt_file_kinds(tmp_path: Path, damage) -> None:  # noqa: ANN001
    path = saved_bm25(tmp_path)
    damage(path)
    with pytest.raises(IndexError_) as err:
        BM25Index.load(path)
    assert_index_error(err, path, "corrupt or truncated index file (not a lethe BM25 index")


def test_bm25_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "indexes" / "bm25.npz"
    with pytest.raises(IndexError_) as err:
        BM25Index.load(path)
    assert_index_error(err, path, "index file missing")


def test_bm25_path_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "indexes" / "bm25.npz"
    path.mkdir(parents=True)
    with pytest.raises(IndexError_) as err:
        BM25Index.load(path)
    assert_index_error(err, path, "is a directory")


def test_dense_roundtrip_still_loads(tmp_path: Path) -> None:
    index = DenseIndex.load(saved_dense(tmp_path))
    assert index.order == ["a", "b", "c"]
    assert index.search_vectors(np.eye(4, dtype=np.float32)[1:2], 1)[0][0].doc_id == "b"


def test_dense_truncated_file(tmp_path: Path) -> None:
    path = saved_dense(tmp_path)
    truncate_to_half(path)
    with pytest.raises(IndexError_) as err:
        DenseIndex.load(path)
    assert_index_error(err, path, "corrupt or truncated index file (not a lethe dense index")


def test_dense_metadata_disagrees_with_vectors(tmp_path: Path) -> None:
    path = saved_dense(tmp_path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["order"] = meta["order"][:2]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(IndexError_) as err:
        DenseIndex.load(path)
    assert_index_error(err, path, "FAISS holds 3 vectors but the metadata lists 2 ids")


def test_dense_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "indexes" / "dense.npz"
    with pytest.raises(IndexError_) as err:
        DenseIndex.load(path)
    assert_index_error(err, path, "index file missing")


# -- TREC run files: reading ---------------------------------------------------------------------
def test_run_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.run"
    with pytest.raises(DataError) as err:
        load_trec_run(path)
    assert str(err.value) == f"{path}: no such run file"


def test_run_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_trec_run(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a directory, expected a TREC run file"


def test_run_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.run"
    path.write_text("q1 Q0 d1 1 1.0 t\n")

    def denied(*_a: object, **_k: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(loaders, "open", denied, raising=False)  # works as root too, unlike chmod
    with pytest.raises(DataError) as err:
        load_trec_run(path)
    assert str(err.value) == f"{path}: cannot read TREC run file: Permission denied"


def test_run_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "run.gz"
    path.write_bytes(gzip.compress(b"q1 Q0 d1 1 1.0 t\n" * 50)[:30])
    with pytest.raises(DataError, match=r"run\.gz: cannot read TREC run file: EOFError"):
        load_trec_run(path)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("q1 Q0 d1 1 bm25", "expected 6 fields (qid Q0 docid rank score tag), got 5"),
        ("q1 Q0 a b 1 2.0 bm25", "got 7; ids cannot contain whitespace in a TREC run"),
        ("q1 Q0 d1 1 high bm25", "score 'high' is not a number"),
    ],
)
def test_run_bad_line_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "bad.run"
    path.write_text(f"q1 Q0 d0 1 3.0 bm25\n\n{line}\n")
    with pytest.raises(DataError) as err:
        load_trec_run(path)
    assert str(err.value).startswith(f"{path}:3: ") and needle in str(err.value)
    assert err.value.line == 3


# -- TREC run files: writing ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("run", "tag", "problem"),
    [
        ({"q1": {"ok": 2.0, "a b": 1.0}}, "t", "doc id 'a b' contains whitespace"),
        ({"q1": {"ok": 1.0}, "q\t2": {"ok": 1.0}}, "t", "query id 'q\\t2' contains whitespace"),
        ({"q1": {"": 1.0}}, "t", "doc id '' is empty"),
        ({"q1": {"ok": 1.0}}, "my tag", "tag 'my tag' contains whitespace"),
    ],
)
def test_writer_refuses_unrepresentable_ids(tmp_path: Path, run: dict, tag: str, problem: str) -> None:
    path = tmp_path / "sys.run"
    path.write_text("previous run\n")
    with pytest.raises(DataError) as err:
        write_trec_run(run, path, tag=tag)
    assert str(err.value) == f"{path}: {problem}; a TREC run file cannot hold it"
    assert path.read_text() == "previous run\n"  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["sys.run"]  # no temp file left


def test_writer_checks_every_id_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "new.run"
    run = {f"q{i}": {f"d{j}": float(j) for j in range(50)} for i in range(20)}
    run["q19"]["last doc"] = 0.5
    with pytest.raises(DataError, match="doc id 'last doc' contains whitespace"):
        write_trec_run(run, path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_writer_output_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "ok.run"
    run = {"q1": {"d-1": 2.0, "d_2": 1.0}, "q2": {"d3": 0.5}}
    write_trec_run(run, path)
    assert load_trec_run(path) == run


def test_writer_target_is_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "out.run"
    target.mkdir()
    with pytest.raises(DataError, match=r"out\.run: cannot write the run file"):
        write_trec_run({"q1": {"d1": 1.0}}, target)


# -- dataset loaders -----------------------------------------------------------------------------
def test_data_directory_without_corpus(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as err:
        load_dataset(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path}: no corpus.jsonl") and "BEIR directory" in msg and "\n" not in msg


def test_data_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{path}: no documents; expected a BEIR directory")


def test_data_binary_file_names_lines(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(DataErrors) as err:
        load_dataset(path)
    assert f"{path}:1: " in str(err.value)


def test_data_corrupt_gzip_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataErrors) as err:
        load_corpus_jsonl(path)
    assert err.value.path == str(path) and "cannot read file" in str(err.value)


def test_data_qrels_entry_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "fox"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "fox"}) + "\n")
    (tmp_path / "qrels" / "test.tsv").mkdir(parents=True)
    with pytest.raises(DataErrors) as err:
        load_beir(tmp_path)
    assert str(tmp_path / "qrels" / "test.tsv") + ": is a directory, expected a qrels file" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"unknown_qrels": "ignore"},
         "unknown_qrels='ignore' is not valid; choose from ['warn', 'error', 'keep', 'drop']"),
        ({"empty_docs": "drop"}, "empty_docs='drop' is not valid; choose from ['error', 'skip']"),
    ],
)
@pytest.mark.parametrize("target", ["missing-dir", "corpus.jsonl", "hf:BeIR/none"])
def test_invalid_modes_fail_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict,
                                           needle: str, target: str) -> None:
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "fox"}) + "\n")

    def no_reading(*_a: object, **_k: object) -> None:
        raise AssertionError("a file was read before the modes were checked")

    monkeypatch.setattr(loaders, "iter_lines", no_reading)
    monkeypatch.setattr(loaders, "load_hf", no_reading)
    name = target if target.startswith("hf:") else tmp_path / target
    with pytest.raises(LetheError) as err:
        load_dataset(name, **kwargs)
    assert needle in str(err.value) and not isinstance(err.value, ValueError)
