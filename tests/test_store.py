"""Tests of lethe.store.DocStore: transactional ingest, reads, owners, and deletion for real."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.errors import StoreError
from lethe.store import DocStore, content_hash
from lethe.types import Doc, Query

MARK_TEXT = b"zebracorn-7f3a91"
MARK_TITLE = b"quokkaflux-2c8e44"
MARK_META = b"narwhalite-9d0b17"


def docs() -> list[Doc]:
    return [
        Doc("d1", "the quick brown fox", "Fox", ("u1",), {"lang": "en"}),
        Doc("d2", "cardano pools pay rewards", "Staking", ("u2", "u1")),
        Doc("d3", "vitamin d and bone health", "", ("u3",)),
        Doc("d4", "an orphan document with no owner"),
    ]


def queries() -> list[Query]:
    return [Query("q2", "fox?", ("u2",)), Query("q1", "staking?", ("u2",)), Query("q3", "bones?", ("u3", "u1"))]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DocStore]:
    s = DocStore(tmp_path / "store" / "store.db")
    s.ingest(docs(), queries())
    yield s
    s.close()


def test_ingest_and_reads(store: DocStore) -> None:
    assert len(store) == 4
    assert "d2" in store and "nope" not in store
    assert store.ids() == ["d1", "d2", "d3", "d4"]
    d1 = store.get("d1")
    assert d1 == Doc("d1", "the quick brown fox", "Fox", ("u1",))
    assert d1 is not None and d1.metadata == {"lang": "en"}
    assert store.get("missing") is None
    got = store.get_many(["d3", "missing", "d1"])
    assert [d.id for d in got] == ["d3", "d1"]  # order asked, absent ids skipped
    assert store.get("d2").owners == ("u2", "u1")  # multi-owner doc, owner order kept
    assert store.get("d4").owners == ()
    assert [d.id for d in store.iter_docs(batch_size=3)] == ["d1", "d2", "d3", "d4"]


def test_hashes(store: DocStore) -> None:
    all_hashes = store.hashes()
    assert list(all_hashes) == ["d1", "d2", "d3", "d4"]
    assert all_hashes["d1"] == hashlib.sha256(b"Fox the quick brown fox").hexdigest()
    assert all_hashes["d3"] == hashlib.sha256(b"vitamin d and bone health").hexdigest()
    assert all_hashes["d2"] == content_hash(docs()[1])
    assert store.hashes(["d2", "zz"]) == {"d2": all_hashes["d2"]}


def test_owners(store: DocStore) -> None:
    assert store.docs_of_owner("u1") == ["d1", "d2"]
    assert store.docs_of_owner("u2") == ["d2"]
    assert store.docs_of_owner("nobody") == []
    assert store.queries_of_owner("u2") == ["q1", "q2"]
    assert store.queries_of_owner("u1") == ["q3"]
    assert store.owner_counts() == [("u1", 2), ("u2", 1), ("u3", 1)]


def test_ingest_is_one_transaction(store: DocStore) -> None:
    before = (store.ids(), store.hashes(), store.fingerprint(), store.owner_counts())
    batch = [Doc("d5", "brand new", owners=("u5",)), Doc("d2", "clobbered text", owners=("u9",))]
    with pytest.raises(StoreError, match=r"1 document id\(s\) already in the store.*'d2'.*upsert=True"):
        store.ingest(batch, [Query("q9", "new query", ("u5",))])
    assert "d5" not in store
    assert (store.ids(), store.hashes(), store.fingerprint(), store.owner_counts()) == before
    assert store.docs_of_owner("u5") == [] and store.queries_of_owner("u5") == []
    # the store is still writable after the rollback
    assert store.ingest([Doc("d6", "later")]) == 1
    assert len(store) == 5


def test_upsert_replaces(store: DocStore) -> None:
    old = store.hashes(["d2"])["d2"]
    n = store.ingest([Doc("d2", "clobbered text", "New", ("u9",)), Doc("d5", "fresh", owners=("u1",))], upsert=True)
    assert n == 2
    d2 = store.get("d2")
    assert d2 is not None and (d2.text, d2.title, d2.owners) == ("clobbered text", "New", ("u9",))
    assert store.hashes(["d2"])["d2"] != old
    assert store.docs_of_owner("u1") == ["d1", "d5"]  # d2 lost its old owners
    assert store.docs_of_owner("u9") == ["d2"]
    assert len(store) == 5


def test_delete_returns_present_count(store: DocStore) -> None:
    assert store.delete(["d2", "ghost", "d2", "d4"]) == 2
    assert store.ids() == ["d1", "d3"]
    assert store.docs_of_owner("u2") == []
    assert store.docs_of_owner("u1") == ["d1"]  # the owner rows of d2 went with it
    assert store.owner_counts() == [("u1", 1), ("u3", 1)]
    assert store.delete(["d2"]) == 0
    assert store.delete([]) == 0


def test_delete_queries(store: DocStore) -> None:
    assert store.delete_queries(["q1", "nope"]) == 1
    assert store.queries_of_owner("u2") == ["q2"]


def test_reopen_keeps_content(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = DocStore(path)
    s.ingest(docs())
    fp = s.fingerprint()
    s.close()
    s2 = DocStore(path)
    try:
        assert s2.ids() == ["d1", "d2", "d3", "d4"] and s2.fingerprint() == fp
    finally:
        s2.close()


def store_bytes(directory: Path) -> bytes:
    """Raw bytes of every file in the store's folder (db, WAL, shared memory)."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    assert any(p.name == "store.db" for p in files)
    return b"".join(p.read_bytes() for p in files)


def test_deleted_content_leaves_no_bytes_behind(tmp_path: Path) -> None:
    folder = tmp_path / "secret-store"
    s = DocStore(folder / "store.db")
    try:
        filler = [Doc(f"f{i}", f"filler document number {i} " * 20, owners=(f"o{i % 3}",)) for i in range(40)]
        secret = Doc(
            "secret",
            f"my private note {MARK_TEXT.decode()} about nothing",
            f"title {MARK_TITLE.decode()}",
            ("u-secret",),
            {"note": MARK_META.decode()},
        )
        s.ingest(filler[:20] + [secret] + filler[20:])
        raw = store_bytes(folder)
        for marker in (MARK_TEXT, MARK_TITLE, MARK_META):
            assert marker in raw, f"{marker!r} should be on disk before deletion"
        names = {p.name for p in folder.iterdir()}
        assert "store.db-wal" in names  # WAL mode: the marker may sit in the log

        assert s.delete(["secret"]) == 1
        assert "secret" not in s and len(s) == 40
        raw = store_bytes(folder)
        for marker in (MARK_TEXT, MARK_TITLE, MARK_META):
            assert marker not in raw, f"{marker!r} survived deletion on disk"
        wal = folder / "store.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0
    finally:
        s.close()
    # and after closing too
    raw = store_bytes(folder)
    assert all(m not in raw for m in (MARK_TEXT, MARK_TITLE, MARK_META))


def test_upserted_old_content_leaves_no_bytes_behind(tmp_path: Path) -> None:
    folder = tmp_path / "upsert-store"
    s = DocStore(folder / "store.db")
    try:
        s.ingest([Doc("a", f"old {MARK_TEXT.decode()}"), Doc("b", "other")])
        s.ingest([Doc("a", "new text")], upsert=True)
        s.delete(["nothing-there"])  # a delete scrubs the WAL
        assert MARK_TEXT not in store_bytes(folder)
    finally:
        s.close()


def test_fingerprint_tracks_deletes(tmp_path: Path) -> None:
    a = DocStore(tmp_path / "a" / "store.db")
    b = DocStore(tmp_path / "b" / "store.db")
    try:
        a.ingest(docs())
        fp_full = a.fingerprint()
        assert a.fingerprint() == fp_full  # stable
        a.delete(["d2"])
        assert a.fingerprint() != fp_full
        # a store built without d2, in another order, has the same fingerprint
        b.ingest([d for d in reversed(docs()) if d.id != "d2"])
        assert b.fingerprint() == a.fingerprint()
        # the fingerprint covers content: the same ids with other text differ
        b.ingest([Doc("d1", "changed")], upsert=True)
        assert b.fingerprint() != a.fingerprint()
    finally:
        a.close()
        b.close()
    empty = DocStore(tmp_path / "c" / "store.db")
    try:
        assert empty.fingerprint() == hashlib.sha256().hexdigest()
    finally:
        empty.close()


def test_duplicate_ids_within_one_batch_are_refused(tmp_path: Path) -> None:
    s = DocStore(tmp_path / "store.db")
    try:
        with pytest.raises(StoreError, match="'d'"):
            s.ingest([Doc("d", "first"), Doc("d", "second")])
        assert len(s) == 0
    finally:
        s.close()


def test_repeated_owner_is_not_a_raw_sqlite_error(tmp_path: Path) -> None:
    s = DocStore(tmp_path / "store.db")
    try:
        try:
            s.ingest([Doc("f", "text", owners=("u", "u"))])
        except StoreError:
            assert len(s) == 0
        else:
            assert s.get("f").owners == ("u",)
    finally:
        s.close()
