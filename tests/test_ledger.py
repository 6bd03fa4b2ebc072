"""Tests of lethe.store.Ledger: hash chain, append-only triggers, salted ids, journal."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.errors import LedgerError
from lethe.store import Ledger
from lethe.store.ledger import GENESIS, entry_hash


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ledger" / "ledger.db")
    yield led
    led.close()


def fill(led: Ledger, n: int = 3) -> list[str]:
    rids = [led.request_id([f"doc-{i}"], []) for i in range(n)]
    for i, rid in enumerate(rids):
        led.append(rid, "pending", {"doc_hashes": led.hash_ids([f"doc-{i}"]), "n": i})
    return rids


def test_append_and_verify(ledger: Ledger) -> None:
    assert ledger.verify_chain() == 0
    config = ledger.entries_from(1)[0]
    assert config.kind == "config" and config.prev_hash == GENESIS
    assert config.payload["key_fingerprint"] == ledger.key.fingerprint and "salt" not in config.payload
    e1 = ledger.append("r1", "pending", {"b": 2, "a": [1, 2]})
    e2 = ledger.append("r1", "receipt", {"doc_hashes": ["h1"]})
    e3 = ledger.append("r2", "pending", {})
    assert (e1.seq, e2.seq, e3.seq) == (2, 3, 4)
    assert e1.prev_hash == config.entry_hash and e2.prev_hash == e1.entry_hash and e3.prev_hash == e2.entry_hash
    chain_key = ledger.key.derive("chain")
    assert e1.entry_hash == entry_hash(chain_key, config.entry_hash, "r1", "pending",
                                       json.dumps({"a": [1, 2], "b": 2}), e1.created_at)
    assert ledger.verify_chain() == 3 and ledger.head() == e3.entry_hash
    assert ledger.entries() == [e1, e2, e3]
    assert [e.seq for e in ledger.entries("r1")] == [2, 3]
    assert ledger.entries("r1")[0].payload == {"a": [1, 2], "b": 2}
    assert ledger.receipt("r1") == e2
    assert ledger.receipt("r2") is None


def test_chain_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    led = Ledger(path)
    fill(led, 2)
    led.close()
    led = Ledger(path)
    try:
        led.append("r3", "pending", {})
        assert led.verify_chain() == 3
    finally:
        led.close()


def test_tampered_payload_is_detected(ledger: Ledger) -> None:
    fill(ledger, 3)
    assert ledger.verify_chain() == 3
    raw = sqlite3.connect(str(ledger.path))
    try:
        raw.execute("DROP TRIGGER entries_no_update")
        raw.execute("UPDATE entries SET payload=? WHERE seq=3", (json.dumps({"doc_hashes": [], "n": 1}),))
        raw.commit()
    finally:
        raw.close()
    with pytest.raises(LedgerError, match=r"ledger entry 3 \(pending\): .* do not match its keyed hash"):
        ledger.verify_chain()


def test_rehashed_entry_breaks_the_next_link(ledger: Ledger) -> None:
    fill(ledger, 3)
    e2 = ledger.entries()[1]
    forged_payload = json.dumps({"n": 99}, sort_keys=True)
    forged = entry_hash(ledger.key.derive("chain"), e2.prev_hash, e2.request_id, e2.kind, forged_payload,
                        e2.created_at)
    raw = sqlite3.connect(str(ledger.path))
    try:
        raw.execute("DROP TRIGGER entries_no_update")
        raw.execute("UPDATE entries SET payload=?, entry_hash=? WHERE seq=3", (forged_payload, forged))
        raw.commit()
    finally:
        raw.close()
    with pytest.raises(LedgerError, match="ledger entry 4: prev_hash does not link to entry 3"):
        ledger.verify_chain()


@pytest.mark.parametrize(
    "sql",
    ["UPDATE entries SET payload='{}' WHERE seq=2", "DELETE FROM entries WHERE seq=2", "DELETE FROM entries"],
)
def test_triggers_refuse_update_and_delete(ledger: Ledger, sql: str) -> None:
    fill(ledger, 2)
    before = ledger.entries()
    raw = sqlite3.connect(str(ledger.path))
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute(sql)
        raw.rollback()
    finally:
        raw.close()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.conn.execute(sql)
    assert ledger.entries() == before
    assert ledger.verify_chain() == 2


def test_hash_id_is_keyed_with_a_key_outside_the_ledger(tmp_path: Path) -> None:
    a = Ledger(tmp_path / "a.db")
    b = Ledger(tmp_path / "b.db")
    try:
        ha = a.hash_id("doc-42")
        assert len(ha) == 64 and ha != hashlib.sha256(b"doc:doc-42").hexdigest()
        assert ha != b.hash_id("doc-42")  # another ledger, another key
        assert ha == a.hash_id("doc-42")
        assert a.hash_id("doc-42", "owner") != ha  # kinds are separate id spaces
        assert a.hash_ids(["z", "y", "x"]) == sorted(a.hash_id(v) for v in "xyz")
    finally:
        a.close()
        b.close()
    key_file = tmp_path / "a.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip().encode() not in (tmp_path / "a.db").read_bytes()
    again = Ledger(tmp_path / "a.db")
    try:
        assert again.hash_id("doc-42") == ha  # the key file is read again
    finally:
        again.close()


def test_request_id_is_stable_and_order_independent(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    try:
        rid = led.request_id(["d1", "d2", "d3"], ["alice", "bob"])
        assert len(rid) == 32
        assert led.request_id(["d3", "d1", "d2"], ["bob", "alice"]) == rid
        assert led.request_id(("d2", "d3", "d1"), iter(["alice", "bob"])) == rid
        assert led.request_id(["d1", "d2"], ["alice", "bob"]) != rid
        assert led.request_id(["d1", "d2", "d3"], ["alice"]) != rid
        # a doc id and an owner id with the same spelling are different requests
        assert led.request_id(["x"], []) != led.request_id([], ["x"])
    finally:
        led.close()
    again = Ledger(tmp_path / "l.db")
    try:
        assert again.request_id(["d2", "d1", "d3"], ["alice", "bob"]) == rid
    finally:
        again.close()


def ledger_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def test_raw_ids_never_reach_the_ledger_file(tmp_path: Path) -> None:
    folder = tmp_path / "ledger"
    led = Ledger(folder / "ledger.db")
    secret_doc, secret_owner = "doc-platypus-5e1c", "user-axolotl-77b2"
    try:
        rid = led.request_id([secret_doc], [secret_owner])
        led.append(rid, "pending", {"doc_hashes": led.hash_ids([secret_doc]),
                                    "owner_hashes": led.hash_ids([secret_owner], "owner")})
        # while it runs, the journal holds the raw ids ...
        led.mark_done(rid, "resolve", {"doc_ids": [secret_doc], "owner": secret_owner})
        assert secret_doc.encode() in ledger_bytes(folder)
        led.append(rid, "receipt", {"doc_hashes": led.hash_ids([secret_doc]),
                                    "owner_hashes": led.hash_ids([secret_owner], "owner")})
        # ... and clearing it when the receipt is written leaves no trace on disk
        led.clear_journal(rid)
        raw = ledger_bytes(folder)
        assert secret_doc.encode() not in raw and secret_owner.encode() not in raw
        assert led.hash_id(secret_doc).encode() in raw  # what is stored is the hash
        assert led.verify_chain() == 2
    finally:
        led.close()
    raw = ledger_bytes(folder)
    assert secret_doc.encode() not in raw and secret_owner.encode() not in raw


def test_journal(ledger: Ledger) -> None:
    assert ledger.step_done("r1", "resolve") is None
    ledger.mark_done("r1", "resolve", {"doc_ids": ["a", "b"]})
    ledger.mark_done("r1", "store")
    ledger.mark_done("r2", "resolve", {"doc_ids": ["c"]})
    assert ledger.step_done("r1", "resolve") == {"doc_ids": ["a", "b"]}
    assert ledger.step_done("r1", "store") == {}
    ledger.mark_done("r1", "resolve", {"doc_ids": ["a"]})  # idempotent: replaces
    assert ledger.step_done("r1", "resolve") == {"doc_ids": ["a"]}
    ledger.clear_journal("r1")
    assert ledger.step_done("r1", "resolve") is None and ledger.step_done("r1", "store") is None
    assert ledger.step_done("r2", "resolve") == {"doc_ids": ["c"]}  # other requests untouched
    assert ledger.verify_chain() == 0  # the journal is not part of the chain


def test_pending_requests_and_forgotten_hashes(ledger: Ledger) -> None:
    r1, r2, r3 = fill(ledger, 3)
    assert ledger.pending_requests() == [r1, r2, r3]
    assert ledger.forgotten_hashes() == set()
    ledger.append(r2, "receipt", {"doc_hashes": ["h2a", "h2b"], "owner_hashes": ["o2"]})
    assert ledger.pending_requests() == [r1, r3]
    ledger.append(r1, "receipt", {"doc_hashes": ["h1"], "query_hashes": ["qh"]})
    assert ledger.pending_requests() == [r3]
    assert ledger.forgotten_hashes() == {"h1", "h2a", "h2b"}  # pending payloads do not count
    assert ledger.forgotten_hashes("owner") == {"o2"}
    assert ledger.forgotten_hashes("query") == {"qh"}
    assert ledger.verify_chain() == 5


def test_clear_journal_never_silently_leaves_raw_ids(tmp_path: Path) -> None:
    from lethe.errors import LetheError

    folder = tmp_path / "ledger"
    led = Ledger(folder / "ledger.db")
    reader = sqlite3.connect(str(folder / "ledger.db"), isolation_level=None)
    try:
        led.mark_done("r", "resolve", {"doc_ids": ["doc-ocelot-31f0"]})
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM journal").fetchall()  # a reader pins the WAL
        try:
            led.clear_journal("r")
        except LetheError:
            return  # refusing loudly is acceptable
        assert b"doc-ocelot-31f0" not in ledger_bytes(folder)
    finally:
        reader.execute("ROLLBACK")
        reader.close()
        led.close()
