"""No trace in the workspace (issue #19, deliverable 4): after a forget request, no forgotten id or
32-byte run of forgotten text is left in any file under the home, and `lethe verify` scans for them."""

from __future__ import annotations

import json
import random
import sqlite3
import string
from pathlib import Path

import numpy as np
import pytest

from lethe.data import Dataset
from lethe.embedding.train import EmbedTrainConfig
from lethe.pipelines.forget import forget, verify_workspace
from lethe.pipelines.train import read_examples, score_pools, train_embedder, train_teacher, training_data
from lethe.ranking.cross_encoder import CETrainConfig
from lethe.serve.jobs import JobStore
from lethe.store.ledger import Ledger
from lethe.store.redact import HASHED, redact_tree
from lethe.store.trace import WINDOW, TraceKeys, decode_windows, encode_windows, scan_workspace
from lethe.types import Doc, ForgetRequest, Query
from tests.conftest import make_docs, make_queries
from tests.test_train import TRAIN_QRELS

DOC, OWNER, QUERY = "zq-planted-doc-7c41e9", "zq-owner-5b2d", "zq-query-90ab"


def sentence(seed: int, n: int) -> str:
    """``n`` characters of random lowercase words (unique to this test)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))) for _ in range(n)]
    return " ".join(words)[:n]


TEXT, QUERY_TEXT = sentence(19, 200), sentence(20, 60)


def planted_dataset() -> Dataset:
    """The tiny corpus plus one planted document and query of a planted owner, in the training qrels."""
    docs = [*make_docs(), Doc(DOC, TEXT, "planted title", (OWNER,))]
    queries = [*make_queries(), Query(QUERY, QUERY_TEXT, (OWNER,))]
    qrels = {**TRAIN_QRELS, QUERY: {DOC: 1, "d3": 1}}
    return Dataset("tiny", {d.id: d for d in docs}, {q.id: q for q in queries}, {"train": qrels, "test": qrels})


@pytest.fixture
def planted(workspace):  # noqa: ANN001, ANN201
    """The tiny workspace with the planted data, a teacher, its score cache, a student and its index; the
    teacher's payload also holds an audit record naming the planted pair (as models trained with one do)."""
    ws = workspace
    ds = planted_dataset()
    ws.store.ingest([ds.corpus[DOC]], [ds.queries[QUERY]])
    ws.build_bm25()
    ws.build_dense(encoder="tiny")
    data = training_data(ws, ds, "train", pool_depth=8)
    teacher, _ = train_teacher(ws, data, "teacher", "tiny", CETrainConfig(epochs=1, lr=1e-3, queries_per_step=3,
                                                                          max_length=128), n_negatives=3)
    cache, _ = score_pools(ws, data, "teacher", show_progress=False)
    cfg = EmbedTrainConfig(recipe="dse", epochs=1, lr=1e-3, batch_size=3, max_length=128)
    student, _, _ = train_embedder(ws, data, str(cache), cfg, "student", "tiny", n_negatives=2, ratio=None)
    ws.model_index(str(student))
    audit = {"nonmember_pairs": [[QUERY, DOC]], "probe_qrels": {QUERY: {DOC: 1}}}
    (ws.registry.resolve_path(teacher) / "audit.json").write_text(json.dumps(audit))
    return ws


def every_file(home: Path) -> dict[str, bytes]:
    """Every byte of every file under ``home`` (WAL, shared-memory and journal files included)."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


def plaintext_traces(home: Path, ids: list[str], texts: list[str]) -> list[tuple[str, str]]:
    """The reference check, with the plaintext: (file, what) for each id (UTF-8, UTF-16 or UTF-32) or
    32-byte window of a text's UTF-8 found in a file."""
    needles = {(i, i.encode(enc)) for i in ids for enc in ("utf-8", "utf-16-le", "utf-32-le")}
    windows = {t.encode()[k:k + WINDOW] for t in texts for k in range(len(t.encode()) - WINDOW + 1)}
    found = []
    for name, data in every_file(home).items():
        found += [(name, what) for what, needle in needles if needle in data]
        found += [(name, "text") for w in windows if w in data][:1]
    return found


@pytest.mark.parametrize("unlearn", [None, "retrain"])
def test_no_forgotten_byte_is_left_in_the_workspace(planted, unlearn: str | None) -> None:  # noqa: ANN001
    ws = planted
    assert plaintext_traces(ws.home, [DOC, OWNER, QUERY], [TEXT, QUERY_TEXT])  # the check can see them
    rep = forget(ws, ForgetRequest(owners=(OWNER,)), unlearn=unlearn)
    assert rep.level == "deleted" and "scrub" in rep.steps_run
    if unlearn is None:
        assert "teacher@v1" in rep.receipt["models_still_trained_on_data"]
        # the model not replaced keeps its lineage and records, naming the forgotten items by keyed hash only
        hashed = HASHED + ws.ledger.hash_id(DOC)
        assert "teacher@v1" in {str(a) for a in ws.registry.affected_by(doc_ids=[hashed])}
        assert hashed in {e.positive for e in read_examples(ws, "teacher")}
    assert plaintext_traces(ws.home, [DOC, OWNER, QUERY], [TEXT, QUERY_TEXT]) == []
    result = verify_workspace(ws)
    assert result["trace"]["found"] == [] and result["trace"]["files_scanned"] > 10, result["trace"]
    assert result["ok"]
    assert plaintext_traces(ws.home, [DOC, OWNER, QUERY], [TEXT, QUERY_TEXT]) == []  # verify wrote none either


def test_a_request_naming_a_hashed_id_again_still_lists_the_model(planted) -> None:  # noqa: ANN001
    ws = planted
    forget(ws, ForgetRequest((DOC,)))
    again = forget(ws, ForgetRequest((DOC, "d5")), unlearn="retrain")
    by_model = {m["model"]: m for m in again.receipt["unlearning"]}
    assert by_model["teacher@v1"]["level"] == "not_unlearned" and "earlier request" in by_model["teacher@v1"]["why"]
    assert "teacher@v1" in again.receipt["models_still_trained_on_data"] and not again.reached


def test_verify_finds_what_is_planted_in_the_home(planted) -> None:  # noqa: ANN001
    ws = planted
    forget(ws, ForgetRequest(owners=(OWNER,)))
    forget(ws, ForgetRequest(("d3",)))
    assert verify_workspace(ws)["ok"]
    (ws.home / "notes.txt").write_text(f"copied before the request: {TEXT[50:90]} (end)")
    (ws.home / "stray.json").write_text(json.dumps({"owner": OWNER}))
    (ws.home / "short.txt").write_text('ids: "d3", "d4"')
    conn = sqlite3.connect(ws.home / "side.db")
    conn.execute("CREATE TABLE t (doc TEXT, body TEXT)")
    conn.execute("INSERT INTO t VALUES (?, ?)", (DOC, "nothing forgotten here"))
    conn.commit()
    conn.close()
    result = verify_workspace(ws)
    assert result["trace"]["found"] == ["notes.txt", "short.txt", "side.db", "stray.json"], result["trace"]
    whats = {(h["path"], h["what"]) for h in result["trace"]["hits"]}
    assert {("notes.txt", "text"), ("stray.json", "owner id"), ("short.txt", "doc id"), ("side.db", "doc id")} <= whats
    assert not result["ok"]


def test_the_verify_command_reports_the_scan(workspace, monkeypatch, capsys) -> None:  # noqa: ANN001
    from lethe.cli import main

    forget(workspace, ForgetRequest(("d3",)))
    home = workspace.home
    workspace.close()

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr("sys.argv", ["lethe", "verify", "--home", str(home), *args])
        with pytest.raises(SystemExit) as exc:
            main()
        return int(exc.value.code or 0), capsys.readouterr().out

    code, out = run("--json")
    assert code == 0 and json.loads(out)["trace"]["found"] == []
    (home / "notes.txt").write_text("smart contracts run on the virtual machine")  # 42 bytes of forgotten d3
    code, out = run("--json")
    assert code == 1 and json.loads(out)["trace"]["found"] == ["notes.txt"]
    code, out = run()
    assert code == 1 and "forgotten data found in ['notes.txt']" in out
    code, out = run("--no-trace")
    assert code == 0 and "trace" not in out


# -- the scanner against a plain reference --------------------------------------------------------

LONG_ID, SHORT_ID, OWNER_ID = "zz-long-id-000123", "d9", "owner-77/x"
PLAIN = ("the forgotten review said that the hotel near the station was noisy at night, "
         "über laut und teuer — 騒がしいホテル — and that breakfast was cold")


def reference_files(tmp_path: Path) -> Path:
    """Random binary files and records, with ids and pieces of text planted in some of them."""
    rng = np.random.default_rng(7)
    home = tmp_path / "home"
    home.mkdir()
    text = PLAIN.encode()

    def noise(n: int = 100_000) -> bytes:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    files = {
        "long-id.bin": noise() + b"\x00" + LONG_ID.encode() + b"\x01" + noise(),
        "owner-piece.bin": noise() + b'\x00user:' + OWNER_ID.encode() + b"\x00" + noise(),
        "window.bin": noise() + text[40:72] + noise(),
        "window-31.bin": noise() + text[40:71] + noise(),
        "mid-character.bin": noise() + text[text.index("ü".encode()) + 1:][:40] + noise(),
        "clean.bin": noise(),
        "short-id.json": json.dumps({"groups": [[SHORT_ID, "d1"]]}).encode(),
        "short-id.txt": f'positive: "{SHORT_ID}"\n'.encode(),
        "escaped.json": json.dumps({"note": PLAIN}).encode(),  # non-ASCII escaped: not in the raw bytes
        "clean.json": json.dumps({"groups": [["d1", "d2"]]}).encode(),
    }
    for name, data in files.items():
        (home / name).write_bytes(data)
    np.savez(home / "ids.npz", ids=np.array(["d1", LONG_ID]))  # numpy stores UTF-32
    return home


def naive_found(home: Path) -> set[str]:
    """Files holding an id (as UTF-8, or UTF-32 as numpy stores it) or a 32-byte window of the text, by
    substring search. Short ids count in records and text files: in random binary data any two bytes
    spell one by chance every 64 KiB, so the scanner does not look for them there."""
    text = PLAIN.encode()
    windows = [text[k:k + WINDOW] for k in range(len(text) - WINDOW + 1)]
    found = set()
    for name, data in every_file(home).items():
        ids = [LONG_ID, OWNER_ID] + ([SHORT_ID] if not name.endswith(".bin") else [])
        needles = [i.encode(enc) for i in ids for enc in ("utf-8", "utf-32-le")] + windows
        if any(n in data for n in needles) or (name == "escaped.json" and json.loads(data)["note"] == PLAIN):
            found.add(name)
    return found


def test_the_scanner_agrees_with_a_plain_substring_search(tmp_path: Path) -> None:
    keys = TraceKeys(b"i" * 32, b"w" * 32)
    home = reference_files(tmp_path)
    ids = {"doc": {keys.id_digest(i.encode(), "doc").hex() for i in (LONG_ID, SHORT_ID)},
           "owner": {keys.id_digest(OWNER_ID.encode(), "owner").hex()}}
    windows = keys.text_windows([PLAIN])
    stats: dict = {}
    hits = scan_workspace(home, ids, windows, keys, stats)
    assert {h.path for h in hits} == naive_found(home)
    assert naive_found(home) == {"long-id.bin", "owner-piece.bin", "window.bin", "mid-character.bin",
                                 "short-id.json", "short-id.txt", "escaped.json", "ids.npz"}
    assert stats["files_scanned"] == 11
    assert decode_windows(encode_windows(windows)) == windows and len(windows) == len(PLAIN.encode()) - WINDOW + 1


def test_trace_keys_are_the_ledgers_hashes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    keys = ledger.trace_keys()
    for kind in ("doc", "owner", "query"):
        assert keys.id_digest(b"abc", kind).hex() == ledger.hash_id("abc", kind)
    assert decode_windows(ledger.text_windows([PLAIN])) == keys.text_windows([PLAIN])
    ledger.close()


def test_records_are_redacted_but_model_files_are_not(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "scores.json").write_text(json.dumps({"scores": {"q1": {"d0": 1.5, "d1": 0.5}}}))
    (tmp_path / "sub" / "labels.jsonl").write_text('{"doc_ids": ["d0", "d2"]}\n{"doc_ids": ["d1"]}\n')
    (tmp_path / "tokenizer.json").write_text(json.dumps({"vocab": {"d0": 5}}))
    mapping = {"d0": "h:abc"}
    changed = redact_tree(tmp_path, mapping)
    assert sorted(p.name for p in changed) == ["labels.jsonl", "scores.json"]
    assert json.loads((tmp_path / "scores.json").read_text()) == {"scores": {"q1": {"h:abc": 1.5, "d1": 0.5}}}
    assert (tmp_path / "sub" / "labels.jsonl").read_text().splitlines()[0] == '{"doc_ids": ["h:abc", "d2"]}'
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"vocab": {"d0": 5}}
    assert redact_tree(tmp_path, mapping) == []  # idempotent


def test_a_finished_jobs_error_names_no_id(tmp_path: Path) -> None:
    jobs = JobStore(tmp_path)
    job = jobs.submit("t", {"doc_ids": ["zq-secret-doc"], "owners": ["zq-secret-owner"], "reason": ""})
    jobs.finish(job.id, "failed", None, None, "1 unknown doc id(s): ['zq-secret-doc']; owner zq-secret-owner.")
    assert jobs.get(job.id).error == "1 unknown doc id(s): ['<id>']; owner <id>."
    data = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"zq-secret" not in data
    jobs.close()


def test_metadata_that_names_a_forgotten_document_is_scrubbed(workspace) -> None:  # noqa: ANN001
    """SciFact's claims name their evidence documents in metadata: the id must not stay there."""
    from lethe.pipelines.forget import forget, verify_workspace
    from lethe.types import ForgetRequest, Query

    workspace.store.ingest([], [Query("q9", "a claim", (), metadata={"d3": [{"label": "SUPPORT"}], "also": "d3"})])
    forget(workspace, ForgetRequest(("d3",)))
    meta = workspace.store.conn.execute("SELECT metadata FROM queries WHERE id='q9'").fetchone()[0]
    assert '"d3"' not in meta and meta.count('"h:') == 2
    assert verify_workspace(workspace)["trace"]["found"] == []
