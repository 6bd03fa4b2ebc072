"""Fault-and-abuse suite: real `lethe` processes racing and killed with SIGKILL at every journal step.

Slow (each real process pays the torch import, ~6 s), so marked ``slow``; CI runs it (``make test``).
The in-process cases (tampering, tombstones, corrupt files, bad input) live in
``test_forget_hardening.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lethe.pipelines.forget import resume, verify_workspace
from lethe.pipelines.workspace import Workspace
from tests.conftest import make_home
from tests.test_cli import write_beir

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}
U2_TEXTS = [b"a fast auburn fox leaped above a sleepy hound", b"nutrition facts about vitamin d and bone health",
            b"fox jumping"]  # owner u2's documents d1, d5 and question q1


def start(*args: str | Path) -> subprocess.Popen:
    """A real `lethe` process (``python -m lethe.cli``)."""
    return subprocess.Popen([sys.executable, "-m", "lethe.cli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def check_clean(home: Path, forgotten: list[str] | None = None) -> dict:
    """verify passes, nothing is pending or failed, and no forgotten id is in any index."""
    with Workspace(home, show_progress=False, create=False) as ws:
        result = verify_workspace(ws)
        assert result["ok"], result
        for name in ("bm25", "dense"):
            index = ws.load_index(name)
            ids = set(index.doc_ids if name == "bm25" else index.order)
            assert not ids & set(forgotten or []), (name, ids & set(forgotten or []))
    return result


def all_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


@pytest.mark.parametrize("trial", range(4))
def test_two_concurrent_forgets_both_complete(tmp_path: Path, tiny_bert_dir: Path, trial: int) -> None:
    home = make_home(tmp_path, tiny_bert_dir)
    a, b = (["--owner", "u1"], ["--owner", "u2"]) if trial % 2 == 0 else (["--doc", "d3", "--doc", "d7"],
                                                                          ["--doc", "d8", "--doc", "d9"])
    p1 = start("forget", "--home", home, *a)
    time.sleep(0.5 * trial)  # started 0-1.5 s apart
    p2 = start("forget", "--home", home, *b)
    (rc1, out1, err1), (rc2, out2, err2) = finish(p1), finish(p2)
    assert rc1 == 0 and rc2 == 0, (out1, err1, out2, err2)
    assert "level deleted" in out1 and "level deleted" in out2
    gone = ["d0", "d2", "d4", "d10", "d1", "d5"] if trial % 2 == 0 else ["d3", "d7", "d8", "d9"]
    result = check_clean(home, gone)
    assert len(result["receipts"]) == 2 and all(r["level"] == "deleted" for r in result["receipts"])


def test_forget_concurrent_with_index_rebuild(tmp_path: Path, tiny_bert_dir: Path) -> None:
    home = make_home(tmp_path, tiny_bert_dir)
    p1 = start("index", "--home", home)  # rebuilds bm25 + dense from the store
    p2 = start("forget", "--home", home, "--owner", "u1")
    (rc1, out1, err1), (rc2, out2, err2) = finish(p1), finish(p2)
    assert rc1 == 0 and rc2 == 0, (out1, err1, out2, err2)
    check_clean(home, ["d0", "d2", "d4", "d10"])


def test_forget_concurrent_with_training(tmp_path: Path, tiny_bert_dir: Path) -> None:
    home = make_home(tmp_path, tiny_bert_dir)
    data = write_beir(tmp_path / "tiny")
    p1 = start("train", "cross-encoder", "--data", data, "--home", home, "--split", "test", "--base", "tiny",
               "--max-length", "32", "--negatives", "2")
    time.sleep(1.0)
    p2 = start("forget", "--home", home, "--doc", "d3")
    (rc1, out1, err1), (rc2, out2, err2) = finish(p1), finish(p2)
    assert rc1 == 0 and rc2 == 0, (out1, err1, out2, err2)
    assert "registered teacher@v1" in out1
    check_clean(home, ["d3"])


def test_a_busy_workspace_waits_or_fails_fast(tmp_path: Path, tiny_bert_dir: Path) -> None:
    home = make_home(tmp_path, tiny_bert_dir)
    ws = Workspace(home, show_progress=False)
    ws.lock.acquire()
    try:
        rc, _, err = finish(start("forget", "--home", home, "--doc", "d3", "--no-wait"))
        assert rc == 2 and "is being changed by pid" in err and "Traceback" not in err
        waiting = start("forget", "--home", home, "--doc", "d3")
        time.sleep(8)
        assert waiting.poll() is None  # still waiting for the lock
    finally:
        ws.lock.release()
        ws.close()
    rc, out, err = finish(waiting)
    assert rc == 0 and "waiting for it to finish" in err and "level deleted" in out
    check_clean(home, ["d3"])


def test_readers_never_block_and_see_a_committed_state(tmp_path: Path, tiny_bert_dir: Path) -> None:
    home = make_home(tmp_path, tiny_bert_dir)
    proc = start("forget", "--home", home, "--owner", "u1")
    searches = 0
    while proc.poll() is None:
        with Workspace(home, show_progress=False, create=False) as ws:
            hits = ws.retriever("bm25").search(["vitamin c supplements cold"], 12)[0]  # d6 stays
            assert hits and len({h.doc_id for h in hits}) == len(hits)
            searches += 1
    assert proc.returncode == 0 and searches > 0
    check_clean(home, ["d0", "d2", "d4", "d10"])


STEPS = ["pending", "resolve", "store", "index:bm25", "index:dense", "cache", "verify", "scrub", "receipt"]


@pytest.mark.parametrize("step", STEPS)
def test_kill9_at_every_step_then_resume(tmp_path: Path, tiny_bert_dir: Path, step: str) -> None:
    home = make_home(tmp_path, tiny_bert_dir)
    rc, out, err = finish(start("forget", "--home", home, "--owner", "u2", "--crash-after", f"kill:{step}"))
    assert rc == -signal.SIGKILL, (out, err)
    rc, out, err = finish(start("forget", "--home", home, "--resume"))
    assert rc == 0, (out, err)
    assert ("level deleted" in out) == (step != "receipt")  # killed after its receipt: nothing left to resume
    result = check_clean(home, ["d1", "d5"])
    assert [r["level"] for r in result["receipts"]] == ["deleted"]
    data = all_bytes(home)
    assert not any(text in data for text in U2_TEXTS)
    assert b'"d1"' not in data and b'"u2"' not in data  # the journal that held raw ids is gone


UNLEARN_STEPS = ["pending", "resolve", "model:teacher@v1", "model:teacher-scores@v1", "model:student@v1", "store",
                 "index:bm25", "reindex:student@v1", "retire", "verify", "receipt"]


@pytest.fixture
def trained_home(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    """A workspace with teacher -> score cache -> student and the student's dense index."""
    from tests.test_forget_models import train_tiny_models

    home = make_home(tmp_path, tiny_bert_dir)
    with Workspace(home, show_progress=False) as ws:
        train_tiny_models(ws)
    return home


@pytest.mark.parametrize("step", UNLEARN_STEPS)
def test_kill9_at_every_step_of_an_unlearning_forget_then_resume(trained_home: Path, step: str) -> None:
    args = ("--unlearn", "auto", "--unlearn-steps", "2", "--unlearn-lr", "1e-3")
    rc, out, err = finish(start("forget", "--home", trained_home, "--doc", "d0", *args,
                                "--crash-after", f"kill:{step}"))
    assert rc == -signal.SIGKILL, (out, err)
    rc, out, err = finish(start("forget", "--home", trained_home, "--resume", *args[2:]))
    assert rc == 0, (out, err)
    with Workspace(trained_home, show_progress=False, create=False) as ws:
        result = verify_workspace(ws)
        assert result["ok"], result
        receipt = ws.ledger.receipt(result["receipts"][0]["request_id"]).payload
        assert receipt["level"] == "deleted" and receipt["models_still_trained_on_data"] == []
        assert str(ws.registry.get("teacher")) == "teacher@v2" and str(ws.registry.get("student")) == "student@v2"
        assert not resume(ws)


def test_forget_concurrent_with_the_service(tmp_path: Path, tiny_bert_dir: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lethe.serve.app import create_app
    from lethe.serve.keys import KeyStore

    home = make_home(tmp_path / "serve" / "tenants", tiny_bert_dir).parent.parent  # tenant "home"
    store = KeyStore(home)
    key = {"Authorization": f"Bearer {store.add('home', 'editor')}"}
    store.close()
    tenant = home / "tenants" / "home"
    with TestClient(create_app(home)) as client:
        proc = start("forget", "--home", tenant, "--owner", "u2")
        job = client.post("/forget", json={"owners": ["u1"]}, headers=key).json()
        deadline = time.time() + 120
        while client.get(f"/jobs/{job['job_id']}", headers=key).json()["state"] not in ("done", "failed"):
            assert time.time() < deadline
            time.sleep(0.2)
        state = client.get(f"/jobs/{job['job_id']}", headers=key).json()
        rc, out, err = finish(proc)
    assert state["state"] == "done" and state["level"] == "deleted", state
    assert rc == 0, (out, err)
    result = check_clean(tenant, ["d0", "d2", "d4", "d10", "d1", "d5"])
    assert len(result["receipts"]) == 2
