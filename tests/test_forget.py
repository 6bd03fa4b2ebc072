"""Index-level forgetting end to end: receipts, verification, replay, crash-resume, no leftovers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lethe.errors import ForgetError
from lethe.pipelines.forget import InjectedCrash, forget, resume, verify_workspace
from lethe.types import ForgetRequest

STEPS = ["resolve", "store", "index:bm25", "index:dense", "cache", "verify", "scrub"]


def all_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


def test_forget_owner_removes_everything(workspace) -> None:
    owned = workspace.store.docs_of_owner("u1")
    assert owned == ["d0", "d10", "d2", "d4"]
    report = forget(workspace, ForgetRequest(owners=("u1",), reason="gdpr"))
    r = report.receipt
    assert report.level == "deleted" and r["verification"]["all_passed"]
    assert r["n_docs"] == 4 and r["n_queries"] == 1  # q2 was asked by u1
    assert r["removed_from_indexes"] == {"bm25": 4, "dense": 4}
    for d in owned:
        assert d not in workspace.store
        for name in ("bm25", "dense"):
            assert d not in workspace.load_index(name)
    assert "d1" in workspace.store and len(workspace.store) == 8
    for name in ("bm25", "dense"):
        checks = r["verification"]["indexes"][name]
        assert checks["equals_rebuild"] and checks["absent_from_own_text_search"] and checks["others_present"]
        assert set(workspace.registry.lineage_of(name).doc_ids) == set(workspace.store.ids())
    assert verify_workspace(workspace)["ok"]


def test_multi_owner_document_goes_with_either_owner(workspace) -> None:
    forget(workspace, ForgetRequest(owners=("u9",)))
    assert "d2" not in workspace.store and "d0" in workspace.store


def test_replay_is_a_noop_and_reforgetting_ids_is_harmless(workspace) -> None:
    first = forget(workspace, ForgetRequest(doc_ids=("d5", "d6")))
    again = forget(workspace, ForgetRequest(doc_ids=("d6", "d5")))
    assert again.noop and again.request_id == first.request_id
    entries = workspace.ledger.entries()
    assert [e.kind for e in entries] == ["pending", "receipt"]
    subset = forget(workspace, ForgetRequest(doc_ids=("d5",)))  # already gone through the other request
    assert subset.noop and "earlier request" in subset.note
    assert [e.kind for e in workspace.ledger.entries()] == ["pending", "receipt"]  # nothing written
    with pytest.raises(ForgetError, match="1 unknown doc id"):
        forget(workspace, ForgetRequest(doc_ids=("no-such-doc",)))
    assert [e.kind for e in workspace.ledger.entries()] == ["pending", "receipt"]


def test_no_clear_id_or_text_survives(workspace) -> None:
    marker = "ledger tamper evident"  # d11's text
    home = workspace.home
    assert marker.encode() in all_bytes(home)
    forget(workspace, ForgetRequest(doc_ids=("d11",)))
    data = all_bytes(home)
    assert marker.encode() not in data
    ledger_bytes = (home / "ledger.db").read_bytes() + (home / "ledger.db-wal").read_bytes()
    assert b'"d11"' not in ledger_bytes


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_step_then_resume(workspace, step: str) -> None:
    request = ForgetRequest(owners=("u2",))
    with pytest.raises(InjectedCrash):
        forget(workspace, request, crash_after=step)
    assert workspace.ledger.pending_requests()
    reports = resume(workspace)
    assert len(reports) == 1
    rep = reports[0]
    assert rep.level == "deleted", rep.receipt["verification"]
    assert step not in rep.steps_run  # finished steps are not redone
    assert not workspace.ledger.pending_requests()
    assert verify_workspace(workspace)["ok"]
    assert forget(workspace, request).noop


def test_verify_detects_tampering_and_leftovers(workspace) -> None:
    forget(workspace, ForgetRequest(doc_ids=("d3",)))
    assert verify_workspace(workspace)["ok"]
    # a forgotten document re-appearing in an index is caught without knowing its id in clear
    from lethe.types import Doc

    bm25 = workspace.load_index("bm25")
    bm25.add([Doc("d3", "ethereum smart contracts run on the virtual machine", "title 3")])
    workspace.save_index("bm25", bm25)
    result = verify_workspace(workspace)
    assert not result["ok"] and not result["indexes"]["bm25"]["free_of_forgotten"]
    # tampering with the chain is caught
    conn = sqlite3.connect(workspace.home / "ledger.db")
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET payload = replace(payload, 'deleted', 'exact')")
    conn.commit()
    conn.close()
    result = verify_workspace(workspace)
    assert not result["ok"] and not result["ledger_chain_intact"] and "tampered" in result["ledger_problem"]


def test_ivf_index_is_retrained_when_forgetting(workspace) -> None:
    workspace.build_dense("dense_ivf", encoder="tiny", kind="ivf", nlist=2)
    rep = forget(workspace, ForgetRequest(doc_ids=("d0",)))
    assert rep.level == "deleted"
    assert rep.receipt["verification"]["indexes"]["dense_ivf"]["equals_rebuild"]
    assert workspace.load_index("dense_ivf").exactness()["exact"]


def test_models_trained_on_the_data_are_reported_not_claimed(workspace) -> None:
    from lethe.registry import Lineage, ModelSpec

    workspace.registry.register(ModelSpec(name="student", kind="bi_encoder", source="hf:org/student"),
                                lineage=Lineage(doc_ids=["d4"]))
    rep = forget(workspace, ForgetRequest(doc_ids=("d4",)))
    assert rep.receipt["models_still_trained_on_data"] == ["student@v1"]
    assert rep.receipt["model_level"].startswith("not reached")
    assert rep.level == "deleted"  # the index level, and nothing more
