"""Forgetting under abuse, in-process: ledger tampering (every field, key, salt, tail, rewritten chain),
tombstones on re-ingest, validated requests, failed and incomplete requests, exit codes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lethe.data import Dataset
from lethe.errors import ForgetError, LedgerError, LetheError
from lethe.pipelines import forget as forget_mod
from lethe.pipelines.forget import forget, resume, retry, verify_workspace
from lethe.pipelines.workspace import Workspace
from lethe.store.ledger import entry_hash
from lethe.types import Doc, ForgetRequest
from tests.conftest import make_docs, make_queries

U1_DOCS = ["d0", "d10", "d2", "d4"]


def raw_sql(ws: Workspace, *statements: tuple[str, tuple]) -> None:
    """Change the ledger file behind lethe's back (as an attacker with file access would)."""
    conn = sqlite3.connect(str(ws.home / "ledger.db"))
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS entries_no_delete")
    for sql, args in statements:
        conn.execute(sql, args)
    conn.commit()
    conn.close()


def problem(ws: Workspace, head: str | None = None) -> str:
    result = verify_workspace(ws, head=head)
    assert not result["ok"] and not result["ledger_chain_intact"]
    return result["ledger_problem"]


@pytest.fixture
def forgotten(workspace):  # noqa: ANN201
    """Three finished requests: entries 2-7 (entry 1 is the ledger's configuration)."""
    for req in (ForgetRequest(("d3",)), ForgetRequest(owners=("u1",)), ForgetRequest(("d7",))):
        assert forget(workspace, req).level == "deleted"
    assert verify_workspace(workspace)["ok"]
    return workspace


# -- the keyed ledger ---------------------------------------------------------------------------

@pytest.mark.parametrize(("column", "value", "named"), [
    ("request_id", "'forged'", "ledger entry 4 (pending): request_id, kind, payload or created_at"),
    ("kind", "'failed'", "ledger entry 4 (failed): request_id, kind, payload or created_at"),
    ("payload", "replace(payload, 'reason', 'raison')", "ledger entry 4 (pending)"),
    ("created_at", "created_at + 1", "ledger entry 4 (pending): request_id, kind, payload or created_at"),
    ("prev_hash", "'" + "0" * 64 + "'", "ledger entry 4: prev_hash does not link to entry 3"),
    ("entry_hash", "'" + "f" * 64 + "'", "ledger entry 4 (pending): request_id, kind, payload or created_at"),
    ("seq", "40", "ledger entry 4 is missing (the sequence jumps to 5)"),
])
def test_tampering_with_any_field_is_detected_and_named(forgotten, column: str, value: str, named: str) -> None:
    raw_sql(forgotten, (f"UPDATE entries SET {column} = {value} WHERE seq = 4", ()))
    assert named in problem(forgotten)


def test_a_receipt_rewritten_to_claim_more_is_detected(forgotten) -> None:
    raw_sql(forgotten, ("UPDATE entries SET payload = replace(payload, '\"deleted\"', '\"exact\"') "
                        "WHERE kind = 'receipt' AND seq = 5", ()))
    assert "ledger entry 5 (receipt)" in problem(forgotten)


def test_the_config_entry_is_sealed_too(forgotten) -> None:
    raw_sql(forgotten, ("UPDATE entries SET payload = replace(payload, 'own_text_probes\": 20', "
                        "'own_text_probes\": 0') WHERE seq = 1", ()))
    assert "ledger entry 1 (config)" in problem(forgotten)


def test_the_ledger_holds_no_key_and_no_salt(forgotten) -> None:
    key_file = forgotten.home.parent / f"{forgotten.home.name}.key"
    key_hex = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    everything = b"".join(p.read_bytes() for p in forgotten.home.rglob("*") if p.is_file())
    assert key_hex.encode() not in everything and bytes.fromhex(key_hex) not in everything
    # an attacker who plants a salt (the old format) gets nowhere: it is refused, not used
    raw_sql(forgotten, ("INSERT INTO meta(key, value) VALUES ('salt', ?)", ("00" * 32,)))
    assert "meta row 'salt'" in problem(forgotten)


def test_another_key_or_no_key_is_refused_by_name(forgotten) -> None:
    home = forgotten.home
    forgotten.close()
    key_file = home.parent / f"{home.name}.key"
    original = key_file.read_text()
    key_file.write_text("ab" * 32 + "\n")
    with pytest.raises(LedgerError, match="the ledger key does not match: the chain was sealed with key fingerprint"):
        Workspace(home, show_progress=False)
    key_file.unlink()
    with pytest.raises(LedgerError, match=r"the ledger key .*\.key is missing"):
        Workspace(home, show_progress=False)
    key_file.write_text(original)
    key_file.chmod(0o644)
    with pytest.raises(LedgerError, match="readable by others"):
        Workspace(home, show_progress=False)
    key_file.chmod(0o600)
    with Workspace(home, show_progress=False, create=False) as ws:
        assert verify_workspace(ws)["ok"]


def test_removing_trailing_entries_is_detected_by_the_head_file_and_by_a_kept_head(forgotten) -> None:
    last = forgotten.ledger.receipt(forgotten.ledger.entries()[-1].request_id)
    raw_sql(forgotten, ("DELETE FROM entries WHERE seq >= 6", ()))
    assert "records 7 entries but the ledger holds 5: trailing entries were removed" in problem(forgotten)
    head_file = forgotten.home.parent / f"{forgotten.home.name}.head"
    head_file.unlink()
    assert f"head file {head_file} is missing" in problem(forgotten)
    # an attacker who also rewrites the head file is caught by a head kept elsewhere (a receipt's)
    head_file.write_text(json.dumps({"seq": 5, "head": forgotten.ledger.head()}))
    assert verify_workspace(forgotten)["ledger_chain_intact"]
    assert "is not in the ledger: trailing entries were removed" in problem(forgotten, head=last.entry_hash)


def test_a_chain_rewritten_with_recomputed_hashes_is_detected(forgotten) -> None:
    rows = forgotten.ledger.entries_from(1)
    # without the key: sha256 (the old scheme) or any other key does not reproduce the keyed hashes
    raw_sql(forgotten, ("UPDATE entries SET payload = '{}' WHERE seq = 7", ()),
            ("UPDATE entries SET entry_hash = ? WHERE seq = 7", (entry_hash(b"guess", rows[5].entry_hash,
                                                                          rows[6].request_id, rows[6].kind, "{}",
                                                                          rows[6].created_at),)))
    assert "ledger entry 7 (receipt)" in problem(forgotten)


def test_a_chain_rewritten_by_a_key_holder_is_caught_by_the_head(forgotten) -> None:
    rows = forgotten.ledger.entries_from(1)
    kept_head = forgotten.ledger.head()
    chain_key = forgotten.ledger.key.derive("chain")
    prev, statements = rows[2].entry_hash, []
    for e in rows[3:]:  # drop the middle request's receipt claim and re-chain everything after it
        payload = json.dumps({**e.payload, "reason": "rewritten"}, sort_keys=True, default=str)
        h = entry_hash(chain_key, prev, e.request_id, e.kind, payload, e.created_at)
        statements.append(("UPDATE entries SET payload = ?, prev_hash = ?, entry_hash = ? WHERE seq = ?",
                           (payload, prev, h, e.seq)))
        prev = h
    raw_sql(forgotten, *statements)
    assert "does not match the head file" in problem(forgotten)
    head_file = forgotten.home.parent / f"{forgotten.home.name}.head"
    head_file.write_text(json.dumps({"seq": len(rows), "head": prev}))
    assert "is not in the ledger" in problem(forgotten, head=kept_head)


def test_receipts_carry_the_chain_head(workspace) -> None:
    before = workspace.ledger.head()
    rep = forget(workspace, ForgetRequest(("d3",)))
    assert rep.receipt["chain_head"] != before  # the pending entry came in between
    entries = workspace.ledger.entries()
    assert rep.receipt["chain_head"] == entries[-2].entry_hash and rep.chain_head == entries[-1].entry_hash
    assert verify_workspace(workspace, head=rep.chain_head)["ok"]


# -- tombstones ---------------------------------------------------------------------------------

def dataset(extra: list[Doc] | None = None) -> Dataset:
    docs = {d.id: d for d in [*make_docs(), *(extra or [])]}
    return Dataset("tiny", docs, {q.id: q for q in make_queries()}, {})


def test_forgotten_documents_and_queries_stay_forgotten_on_reingest(workspace) -> None:
    forget(workspace, ForgetRequest(owners=("u1",)))
    copy = Doc("d4-copy", make_docs()[4].text, make_docs()[4].title)  # same content under another id
    rep = workspace.ingest(dataset([copy, Doc("d99", "a genuinely new document")]))
    assert (rep.added, rep.refused_docs, rep.refused_queries) == (1, 5, 1)
    assert "refused 5 document(s) forgotten earlier" in rep.notes[0]
    assert not any(d in workspace.store for d in [*U1_DOCS, "d4-copy"]) and "d99" in workspace.store
    assert "q2" not in workspace.store.query_ids()
    workspace.build_bm25()
    workspace.build_dense(encoder="tiny")
    assert verify_workspace(workspace)["ok"]


def test_readmission_needs_a_reason_and_is_recorded(workspace) -> None:
    forget(workspace, ForgetRequest(owners=("u1",)))
    with pytest.raises(LetheError, match="needs a --reason"):
        workspace.ingest(dataset(), readmit=["d4"])
    with pytest.raises(LetheError, match="are not new documents of this dataset"):
        workspace.ingest(dataset(), readmit=["d3"], reason="oops")
    with pytest.raises(LetheError, match="never forgotten"):
        workspace.ingest(dataset([Doc("d99", "new")]), readmit=["d99"], reason="oops")
    rep = workspace.ingest(dataset(), readmit=["d4"], reason="owner consented again")
    assert rep.readmitted == 1 and rep.refused_docs == 3 and "d4" in workspace.store
    entry = workspace.ledger.entries()[-1]
    assert entry.kind == "readmit" and entry.payload["reason"] == "owner consented again"
    assert b'"d4"' not in (workspace.home / "ledger.db").read_bytes()
    workspace.build_bm25()
    workspace.build_dense(encoder="tiny")
    assert verify_workspace(workspace)["ok"]


# -- validated requests, failures, retries ------------------------------------------------------

def test_unknown_ids_are_an_error_before_anything_is_written(workspace) -> None:
    ledger_before = workspace.ledger.entries()
    with pytest.raises(ForgetError, match=r"2 unknown doc id\(s\): \['nope-1', 'nope-2'\]"):
        forget(workspace, ForgetRequest(("d3", "nope-1", "nope-2")))
    with pytest.raises(ForgetError, match=r"1 unknown owner\(s\): \['ghost'\]"):
        forget(workspace, ForgetRequest(owners=("ghost",)))
    with pytest.raises(ForgetError, match="needs at least one doc id, owner or label"):
        forget(workspace, ForgetRequest())
    assert workspace.ledger.entries() == ledger_before and "d3" in workspace.store
    assert verify_workspace(workspace)["ok"]


def test_skip_unknown_lists_them_as_not_found_never_as_deleted(workspace) -> None:
    ids = ("d3", "d7", *(f"nope-{i}" for i in range(5)))
    rep = forget(workspace, ForgetRequest(ids), skip_unknown=True)
    r = rep.receipt
    assert rep.level == "deleted" and r["n_docs"] == 2 and r["not_found"] == 5 and len(r["not_found_hashes"]) == 5
    assert not set(r["not_found_hashes"]) & set(r["doc_hashes"])
    assert sum(r["removed_from_indexes"].values()) == 4  # 2 documents x 2 indexes
    again = forget(workspace, ForgetRequest(("d3", "d5"), ("u5",)))  # d3 gone already; an owner named like a doc
    assert again.receipt["already_forgotten"] == 1 and again.receipt["n_docs"] == 3  # d5 + u5's d8, d9


def test_a_failing_step_marks_the_request_failed_and_retry_finishes_it(workspace, monkeypatch) -> None:
    real = forget_mod._delete_from_index
    calls = {"n": 0}

    def flaky(ws, info, ids):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("No space left on device")
        return real(ws, info, ids)

    monkeypatch.setattr(forget_mod, "_delete_from_index", flaky)
    with pytest.raises(ForgetError, match=r"failed at step 'index:dense'.*lethe forget --retry"):
        forget(workspace, ForgetRequest(owners=("u2",)))
    rid = workspace.ledger.failed_requests()[0]
    assert workspace.ledger.state(rid).payload == {"error": "OSError", "step": "index:dense"}
    assert not workspace.ledger.pending_requests() and resume(workspace) == []  # failed is not resumed
    assert workspace.ledger.step_done(rid, "index:bm25") is not None  # its journal stays, for the retry
    result = verify_workspace(workspace)
    assert not result["ok"] and result["to_finish"] == [f"lethe forget --retry {rid}"]
    rep = retry(workspace, rid)
    assert rep.level == "deleted" and rep.reached and rep.receipt["n_docs"] == 2, rep.receipt["verification"]
    assert "index:bm25" not in rep.steps_run and "index:dense" in rep.steps_run  # continued, not redone
    assert verify_workspace(workspace)["ok"] and retry(workspace, rid).noop
    assert b'"u2"' not in (workspace.home / "ledger.db").read_bytes()  # the journal went with the receipt


def test_an_incomplete_request_is_not_reached_and_retry_completes_it(workspace, monkeypatch) -> None:
    real = forget_mod.verify_request

    def failing(ws, plan, indexes, rid=None):  # noqa: ANN001, ANN202
        out = real(ws, plan, indexes, rid)
        return {**out, "all_passed": False}

    monkeypatch.setattr(forget_mod, "verify_request", failing)
    rep = forget(workspace, ForgetRequest(("d3",)))
    assert rep.level == "incomplete" and not rep.reached
    result = verify_workspace(workspace)
    assert not result["ok"] and result["to_finish"] == [f"lethe forget --retry {rep.request_id}"]
    monkeypatch.setattr(forget_mod, "verify_request", real)
    again = retry(workspace, rep.request_id)
    assert again.level == "deleted" and again.reached
    assert verify_workspace(workspace)["ok"]


def test_cli_exit_codes_follow_the_level(workspace, monkeypatch, capsys) -> None:
    from lethe.cli import main

    home = str(workspace.home)
    workspace.close()

    def run(*args: str) -> int:
        monkeypatch.setattr("sys.argv", ["lethe", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        return int(exc.value.code or 0)

    assert run("forget", "--home", home, "--doc", "nope") == 2
    assert "unknown doc id" in capsys.readouterr().err
    monkeypatch.setattr(forget_mod, "verify_request", lambda *a: {"all_passed": False})
    assert run("forget", "--home", home, "--doc", "d3") == 1
    err = capsys.readouterr().err
    assert "short of what was asked" in err and "lethe forget --retry" in err
    monkeypatch.undo()
    rid = err.split("--retry ")[1].split("`")[0]
    assert run("forget", "--home", home, "--retry", rid, "--json") == 0
    receipt = json.loads(capsys.readouterr().out)
    assert receipt["level"] == "deleted" and len(receipt["chain_head"]) == 64 and len(receipt["entry_hash"]) == 64
    assert run("verify", "--home", home, "--head", receipt["entry_hash"]) == 0
    assert run("verify", "--home", home, "--head", "0" * 64) == 1
    assert run("forget", "--home", home) == 2
    assert "give exactly one of" in capsys.readouterr().err


def test_home_paths_are_checked(tmp_path: Path) -> None:
    with pytest.raises(LetheError, match="no lethe workspace at"):
        Workspace(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(LetheError, match="is a file, not a workspace directory"):
        Workspace(tmp_path / "file")
