"""Tests of lethe.data: BEIR / JSONL loading, owner mapping, validation messages, HF and TREC runs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from lethe.data import (
    Dataset,
    dataset_from_records,
    extract_owners,
    load_beir,
    load_corpus_jsonl,
    load_dataset,
    load_hf,
    load_qrels_tsv,
    load_queries_jsonl,
    load_trec_run,
    resolve_dataset_path,
)
from lethe.errors import DataError, DataErrors, DatasetNotFound, LetheError

SHARED_CARDANO = Path("/work/shared/data/stackexchange-cardano")

CORPUS = [
    {"_id": "d1", "title": "Fox", "text": "the quick brown fox", "metadata": {"owner_user_id": "17"}},
    {"_id": "d2", "title": "", "text": "a lazy dog sleeps", "metadata": {"authors": ["Ann Lee", "Bo Chen"]}},
    {"_id": "d3", "title": "Staking", "text": "cardano pools pay rewards", "metadata": {"owner_user_id": 42}},
    {"_id": "d4", "title": "Orphan", "text": "no owner here"},
]
QUERIES = [
    {"_id": "q1", "text": "fox", "metadata": {"owner_user_id": "5"}},
    {"_id": "q2", "text": "dog"},
]


def write_jsonl(path: Path, rows: list[Any], gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_tsv(path: Path, rows: list[tuple[str, ...]], header: bool = True, gz: bool = False) -> Path:
    lines = (["query-id\tcorpus-id\tscore"] if header else []) + ["\t".join(r) for r in rows]
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_beir(root: Path, gz: bool = False) -> Path:
    write_jsonl(root / ("corpus.jsonl.gz" if gz else "corpus.jsonl"), CORPUS, gz=gz)
    write_jsonl(root / "queries.jsonl", QUERIES)
    write_tsv(root / "qrels" / "test.tsv", [("q1", "d1", "2"), ("q1", "d3", "0"), ("q2", "d2", "1")])
    if gz:
        write_tsv(root / "qrels" / "train.tsv.gz", [("q2", "d4", "1")], gz=True)
    return root


# -- happy paths -------------------------------------------------------------------------------
def test_load_beir_plain(tmp_path: Path) -> None:
    ds = load_beir(make_beir(tmp_path / "tiny"))
    assert isinstance(ds, Dataset)
    assert ds.name == "tiny"
    assert list(ds.corpus) == ["d1", "d2", "d3", "d4"]
    assert ds.corpus["d1"].title == "Fox" and ds.corpus["d1"].text == "the quick brown fox"
    assert ds.corpus["d1"].contents == "Fox the quick brown fox"
    assert ds.corpus["d2"].contents == "a lazy dog sleeps"
    assert set(ds.queries) == {"q1", "q2"}
    assert ds.queries["q1"].owners == ("5",)
    assert ds.queries["q2"].owners == ()
    assert ds.qrels == {"test": {"q1": {"d1": 2, "d3": 0}, "q2": {"d2": 1}}}
    assert list(ds.split_queries("test")) == ["q1", "q2"]
    with pytest.raises(DatasetNotFound, match=r"no qrels split 'dev'.*\['test'\]"):
        ds.split_qrels("dev")


def test_load_beir_gzipped_every_split(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "gz", gz=True)
    assert not (root / "corpus.jsonl").exists()
    ds = load_beir(root)
    assert len(ds.corpus) == 4
    assert set(ds.qrels) == {"test", "train"}
    assert ds.qrels["train"] == {"q2": {"d4": 1}}
    assert ds.qrels["test"]["q1"] == {"d1": 2, "d3": 0}


def test_owners_scalar_list_and_missing(tmp_path: Path) -> None:
    ds = load_beir(make_beir(tmp_path / "o"))
    assert ds.corpus["d1"].owners == ("17",)
    assert ds.corpus["d2"].owners == ("Ann Lee", "Bo Chen")
    assert ds.corpus["d3"].owners == ("42",)  # a numeric id becomes a string
    assert ds.corpus["d4"].owners == ()
    assert ds.owners() == {"17": ["d1"], "Ann Lee": ["d2"], "Bo Chen": ["d2"], "42": ["d3"]}


def test_configured_owner_field(tmp_path: Path) -> None:
    rows = [
        {"_id": "a", "text": "x", "metadata": {"owner_user_id": "1", "team": {"lead": "zed"}}},
        {"_id": "b", "text": "y", "metadata": {"team": {"lead": ["amy", "zed", "amy", " "]}}},
    ]
    f = write_jsonl(tmp_path / "c.jsonl", rows)
    corpus = load_corpus_jsonl(f, owner_field="metadata.team.lead")
    assert corpus["a"].owners == ("zed",)  # the configured field wins over the defaults
    assert corpus["b"].owners == ("amy", "zed")  # deduplicated, blanks dropped
    assert extract_owners({"metadata": {"owner_user_id": "9"}}, None) == ("9",)
    assert extract_owners({"metadata": {"authors": ["p", "q"]}}, None) == ("p", "q")
    assert extract_owners({"metadata": {}}, None) == ()
    assert extract_owners({"metadata": {"owner_user_id": "9"}}, "metadata.nope") == ()


def test_load_dataset_jsonl_file(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "mini.jsonl", CORPUS)
    ds = load_dataset(f)
    assert ds.name == "mini"
    assert ds.path == f
    assert list(ds.corpus) == ["d1", "d2", "d3", "d4"]
    assert ds.queries == {} and ds.qrels == {}
    assert ds.owners()["Bo Chen"] == ["d2"]


def test_load_dataset_by_name_through_lethe_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "collections"
    make_beir(root / "alpha")
    make_beir(root / "beta", gz=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LETHE_DATA", str(root))
    ds = load_dataset("beta")
    assert ds.name == "beta" and set(ds.qrels) == {"test", "train"}
    assert resolve_dataset_path("alpha") == root / "alpha"
    with pytest.raises(DatasetNotFound) as err:
        load_dataset("gamma")
    msg = str(err.value)
    assert "'gamma'" in msg and "['alpha', 'beta']" in msg and str(root) in msg
    # an explicit data_root beats the environment
    with pytest.raises(DatasetNotFound, match=r"available: \[\]"):
        resolve_dataset_path("alpha", data_root=tmp_path / "empty-root")


def test_dataset_name_without_lethe_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LETHE_DATA", raising=False)
    with pytest.raises(DatasetNotFound, match="LETHE_DATA is not set"):
        load_dataset("nowhere")


def test_beir_dir_without_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFound, match="no corpus.jsonl"):
        load_beir(tmp_path / "empty")


# -- validation ---------------------------------------------------------------------------------
def corpus_errors(tmp_path: Path, lines: list[str | bytes], name: str = "corpus.jsonl", **kw: Any) -> DataErrors:
    f = tmp_path / name
    f.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    with pytest.raises(DataErrors) as err:
        load_corpus_jsonl(f, **kw)
    return err.value


def test_malformed_json_line(tmp_path: Path) -> None:
    err = corpus_errors(tmp_path, ['{"_id": "a", "text": "ok"}', '{"_id": "b", "text": '])
    assert isinstance(err, DataError) and isinstance(err, LetheError)
    assert err.line == 2 and err.path.endswith("corpus.jsonl")
    assert "corpus.jsonl:2: malformed JSON" in str(err)


def test_missing_id(tmp_path: Path) -> None:
    err = corpus_errors(tmp_path, ['{"_id": "a", "text": "ok"}', '{"text": "no id"}'])
    assert "corpus.jsonl:2: missing field '_id'" in str(err)


def test_duplicate_id_mentions_first_line(tmp_path: Path) -> None:
    lines = ['{"_id": "a", "text": "one"}', '{"_id": "b", "text": "two"}', '{"_id": "a", "text": "again"}']
    err = corpus_errors(tmp_path, lines)
    assert "corpus.jsonl:3: duplicate _id 'a' (first on line 1)" in str(err)


def test_empty_text_and_title(tmp_path: Path) -> None:
    lines = ['{"_id": "a", "text": "ok"}', '{"_id": "e", "title": " ", "text": ""}']
    err = corpus_errors(tmp_path, lines)
    assert "corpus.jsonl:2: document 'e' has empty text and title" in str(err)


def test_empty_docs_skip(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", [{"_id": "a", "text": "ok"}, {"_id": "e", "title": "", "text": ""}])
    assert list(load_corpus_jsonl(f, empty_docs="skip")) == ["a"]


def test_invalid_utf8(tmp_path: Path) -> None:
    err = corpus_errors(tmp_path, ['{"_id": "a", "text": "ok"}', b'{"_id": "b", "text": "\xff\xfe"}'])
    assert err.line == 2
    assert "corpus.jsonl:2: invalid UTF-8" in str(err)


def test_non_object_line_and_empty_corpus(tmp_path: Path) -> None:
    err = corpus_errors(tmp_path, ['{"_id": "a", "text": "ok"}', "[1, 2]"])
    assert "corpus.jsonl:2: expected a JSON object" in str(err)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: no documents"):
        load_corpus_jsonl(empty)


def test_several_errors_all_reported(tmp_path: Path) -> None:
    lines = [
        '{"_id": "a", "text": "ok"}',
        "{oops",
        '{"text": "no id"}',
        '{"_id": "a", "text": "dup"}',
        '{"_id": "z", "text": ""}',
    ]
    err = corpus_errors(tmp_path, lines)
    assert len(err.errors) == 4
    assert [e.line for e in err.errors] == [2, 3, 4, 5]
    msg = str(err)
    assert msg.startswith("4 problem(s)")
    for needle in (":2: malformed JSON", ":3: missing field", ":4: duplicate _id", ":5: document 'z' has empty"):
        assert needle in msg
    # the first error's location is exposed on the aggregate
    assert (err.line, err.problem.split(":")[0]) == (2, "malformed JSON")


def test_more_than_ten_errors_are_summarised(tmp_path: Path) -> None:
    err = corpus_errors(tmp_path, ['{"text": "x"}'] * 13)
    assert len(err.errors) == 13
    assert "... and 3 more" in str(err)


def test_queries_validation(tmp_path: Path) -> None:
    f = tmp_path / "queries.jsonl"
    f.write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n{"_id": "q2", "text": " "}\n')
    with pytest.raises(DataErrors) as err:
        load_queries_jsonl(f)
    msg = str(err.value)
    assert "queries.jsonl:2: duplicate _id 'q1'" in msg
    assert "queries.jsonl:3: query 'q2' has empty text" in msg


def test_qrels_unknown_ids_and_bad_score(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "bad")
    write_tsv(
        root / "qrels" / "test.tsv",
        [("q1", "d1", "1"), ("q1", "nope", "1"), ("q9", "d2", "1"), ("q2", "d2", "high"), ("q2", "d3")],
    )
    with pytest.raises(DataErrors) as err:
        load_beir(root, unknown_qrels="error")
    msg = str(err.value)
    assert len(err.value.errors) == 4
    assert "test.tsv:3: unknown corpus-id 'nope'" in msg  # line 1 is the header
    assert "test.tsv:4: unknown query-id 'q9'" in msg
    assert "test.tsv:5: relevance 'high' is not a number" in msg
    assert "test.tsv:6: expected 3 tab-separated fields, got 2" in msg


def test_qrels_trec_four_columns_without_header(tmp_path: Path) -> None:
    f = tmp_path / "q.tsv"
    f.write_text("q1\t0\td1\t3\nq1\t0\td2\t1.0\n")
    assert load_qrels_tsv(f) == {"q1": {"d1": 3, "d2": 1}}


def test_unknown_qrels_keep_and_drop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_beir(tmp_path / "modes")
    write_tsv(root / "qrels" / "test.tsv", [("q1", "d1", "1"), ("q1", "ghost", "2"), ("q2", "d2", "1")])
    with pytest.raises(DataErrors, match="unknown corpus-id 'ghost'"):
        load_beir(root, unknown_qrels="error")
    with caplog.at_level("WARNING", logger="lethe.data"):
        warned = load_beir(root)  # the default: kept, with one warning line and its count
    assert warned.qrels["test"] == {"q1": {"d1": 1, "ghost": 2}, "q2": {"d2": 1}}
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "1 judgment(s) of 1 document(s) outside the corpus kept; they count as never retrieved "
        "(unknown_qrels='warn'; 'drop' or 'error' to change)"]
    kept = load_beir(root, unknown_qrels="keep")
    assert kept.qrels["test"] == {"q1": {"d1": 1, "ghost": 2}, "q2": {"d2": 1}}
    dropped = load_beir(root, unknown_qrels="drop")
    assert dropped.qrels["test"] == {"q1": {"d1": 1}, "q2": {"d2": 1}}
    # an unknown query (judging a known document) is an error in every mode
    write_tsv(root / "qrels" / "test.tsv", [("q7", "d1", "1")])
    for mode in ("warn", "keep", "drop"):
        with pytest.raises(DataErrors, match="unknown query-id 'q7'"):
            load_beir(root, unknown_qrels=mode)


def test_empty_docs_skip_through_load_dataset(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "skip")
    write_jsonl(root / "corpus.jsonl", [*CORPUS, {"_id": "blank", "title": "", "text": "   "}])
    with pytest.raises(DataErrors, match="document 'blank' has empty text and title"):
        load_dataset(root)
    ds = load_dataset(root, empty_docs="skip")
    assert "blank" not in ds.corpus and len(ds.corpus) == 4


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"unknown_qrels": "ignore"},
         "unknown_qrels='ignore' is not valid; choose from ['warn', 'error', 'keep', 'drop']"),
        ({"empty_docs": "drop"}, "empty_docs='drop' is not valid; choose from ['error', 'skip']"),
    ],
)
def test_invalid_mode_lists_choices(tmp_path: Path, kwargs: dict[str, str], needle: str) -> None:
    root = make_beir(tmp_path / "m")
    with pytest.raises(LetheError) as err:
        load_dataset(root, **kwargs)
    assert needle in str(err.value)


# -- HuggingFace and in-memory records ----------------------------------------------------------
def test_load_hf_offline_raises_dataset_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[Any, ...]] = []

    def offline(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetNotFound) as err:
        load_hf("BeIR/scifact")
    msg = str(err.value)
    assert "'BeIR/scifact'" in msg and "ConnectionError: hub unreachable" in msg
    assert "LETHE_DATA" in msg  # the hint
    assert calls and calls[0][0] == "BeIR/scifact"
    with pytest.raises(DatasetNotFound, match="HuggingFace hub"):
        load_dataset("hf:BeIR/scifact")


def test_load_hf_with_fake_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    tables = {
        ("BeIR/tiny", "corpus"): [{"_id": "d1", "title": "t", "text": "x", "metadata": {"owner_user_id": "u"}}],
        ("BeIR/tiny", "queries"): [{"_id": "q1", "text": "x?"}],
        ("BeIR/tiny-qrels", None): [{"query-id": "q1", "corpus-id": "d1", "score": 1}],
    }

    def fake(name: str, config: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
        return tables[(name, config)]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = load_hf("BeIR/tiny")
    assert ds.corpus["d1"].owners == ("u",)
    assert ds.qrels == {"test": {"q1": {"d1": 1}}}


def test_dataset_from_records() -> None:
    corpus = [
        {"_id": "d1", "title": "A", "text": "alpha", "metadata": {"authors": ["x", "y"]}},
        {"_id": 2, "title": "", "text": "beta"},
    ]
    queries = [{"_id": "q1", "text": "alpha?"}]
    qrels = {
        "test": [{"query-id": "q1", "corpus-id": "d1", "score": 1}, {"query-id": "q1", "corpus-id": "2", "score": 0}]
    }
    ds = dataset_from_records("mem", corpus, queries, qrels)
    assert ds.name == "mem"
    assert ds.corpus["d1"].owners == ("x", "y") and ds.corpus["2"].text == "beta"
    assert ds.queries["q1"].text == "alpha?"
    assert ds.qrels == {"test": {"q1": {"d1": 1, "2": 0}}}


def test_dataset_from_records_reports_unknown_and_duplicate_ids() -> None:
    corpus = [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]
    qrels = {
        "dev": [{"query-id": "q1", "corpus-id": "d1", "score": 1}, {"query-id": "q1", "corpus-id": "zz", "score": 1}]
    }
    with pytest.raises(DataErrors) as err:
        dataset_from_records("mem", corpus, [{"_id": "q1", "text": "?"}], qrels)
    msg = str(err.value)
    assert "mem/corpus:2: duplicate _id 'd1'" in msg
    assert "mem/qrels/dev:2: unknown corpus-id 'zz'" in msg


# -- TREC runs -----------------------------------------------------------------------------------
def test_load_trec_run(tmp_path: Path) -> None:
    f = tmp_path / "bm25.run"
    f.write_text("q1 Q0 d1 1 12.5 bm25\nq1 Q0 d2 2 3 bm25\n\nq2\tQ0\td9\t1\t-0.25\tbm25\n")
    assert load_trec_run(f) == {"q1": {"d1": 12.5, "d2": 3.0}, "q2": {"d9": -0.25}}


def test_load_trec_run_bad_lines(tmp_path: Path) -> None:
    f = tmp_path / "bad.run"
    f.write_text("q1 Q0 d1 1 12.5 bm25\nq1 Q0 d2 2 bm25\n")
    with pytest.raises(DataError, match=r"bad.run:2: expected 6 fields .* got 5"):
        load_trec_run(f)
    f.write_text("q1 Q0 d1 1 12.5 bm25\nq1 Q0 d2 2 high bm25\n")
    with pytest.raises(DataError, match=r"bad.run:2: score 'high' is not a number"):
        load_trec_run(f)


# -- the real collection -------------------------------------------------------------------------
@pytest.mark.skipif(not SHARED_CARDANO.is_dir(), reason="shared stackexchange-cardano collection absent")
def test_real_stackexchange_cardano() -> None:
    ds = load_dataset(SHARED_CARDANO)
    assert ds.name == "stackexchange-cardano"
    assert len(ds.corpus) == 1496
    assert all(len(d.owners) == 1 for d in ds.corpus.values())
    assert len(ds.owners()) == 331
    assert sum(len(v) for v in ds.owners().values()) == 1496
    assert "test" in ds.qrels
    assert sum(len(v) for v in ds.qrels["test"].values()) == 1496


def test_errors_after_invalid_utf8_are_still_reported(tmp_path: Path) -> None:
    err = corpus_errors(tmp_path, ['{"_id": "a", "text": "ok"}', b'{"_id": "b", "text": "\xff"}', "{broken"])
    msg = str(err)
    assert "corpus.jsonl:2: invalid UTF-8" in msg
    assert "corpus.jsonl:3: malformed JSON" in msg
