"""`lethe serve`: endpoints x roles, tenants, forget jobs and their consistency, restarts, bad input."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lethe.pipelines.workspace import Workspace  # noqa: E402
from lethe.serve.app import create_app  # noqa: E402
from lethe.serve.keys import KeyStore  # noqa: E402
from tests.conftest import make_docs, make_home  # noqa: E402

ROLES = ("reader", "editor", "admin")


@pytest.fixture
def service(tmp_path: Path, tiny_bert_dir: Path) -> dict:
    """A service home with tenant ``acme`` (the tiny corpus, BM25 + tiny dense) and an empty ``other``."""
    home = tmp_path / "serve"
    make_home(home / "tenants", tiny_bert_dir, "acme")
    with Workspace(home / "tenants" / "other", show_progress=False):
        pass
    store = KeyStore(home)
    keys = {(t, r): store.add(t, r) for t in ("acme", "other") for r in ROLES}
    store.close()
    return {"home": home, "keys": keys}


def auth(service: dict, role: str, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {service['keys'][tenant, role]}"}


def wait_job(client: TestClient, job_id: str, headers: dict, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_health_metrics_and_openapi(service: dict) -> None:
    with TestClient(create_app(service["home"])) as client:
        assert client.get("/health").json() == {"status": "ok"}
        found = client.post("/search", json={"query": "fox"}, headers=auth(service, "reader"))
        assert found.status_code == 200, found.text
        text = client.get("/metrics").text
        assert 'lethe_requests_total{path="/search",status="200"} 1' in text and 'lethe_jobs{state="done"}' in text
        assert "/forget" in client.get("/openapi.json").json()["paths"]


ENDPOINTS = [  # (method, path, body, the least role that may)
    ("post", "/search", {"query": "cardano rewards"}, "reader"),
    ("get", "/documents/d0", None, "reader"),
    ("get", "/receipts", None, "reader"),
    ("post", "/documents", {"documents": [{"id": "new1", "text": "a new document about staking"}]}, "editor"),
    ("post", "/forget", {"doc_ids": ["d11"], "reason": "test"}, "editor"),
    ("get", "/verify", None, "admin"),
    ("get", "/models", None, "admin"),
]


@pytest.mark.parametrize(("method", "path", "body", "least"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_every_endpoint_by_role(service: dict, method: str, path: str, body: dict | None, least: str) -> None:
    with TestClient(create_app(service["home"], start_worker=False)) as client:
        call = getattr(client, method)
        kwargs = {"json": body} if body is not None else {}
        assert call(path, **kwargs).status_code == 401
        assert call(path, headers={"Authorization": "Bearer nope"}, **kwargs).status_code == 401
        for role in ROLES:
            status = call(path, headers=auth(service, role), **kwargs).status_code
            allowed = ROLES.index(role) >= ROLES.index(least)
            assert (status < 300) if allowed else status == 403, (role, status)


def test_job_receipt_and_evaluation_endpoints_by_role(service: dict) -> None:
    with TestClient(create_app(service["home"])) as client:
        job = client.post("/forget", json={"doc_ids": ["d11"]}, headers=auth(service, "editor")).json()
        rid = wait_job(client, job["job_id"], auth(service, "reader"))["request_id"]
        for path in (f"/jobs/{job['job_id']}", f"/receipts/{rid}", "/evaluation"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
            for role in ROLES:
                assert client.get(path, headers=auth(service, role)).status_code == 200, (path, role)
        assert client.get(f"/receipts/{'0' * 32}", headers=auth(service, "reader")).status_code == 404
        assert client.get("/jobs/nope", headers=auth(service, "reader")).status_code == 404


def test_a_key_reaches_only_its_tenant(service: dict) -> None:
    with TestClient(create_app(service["home"])) as client:
        job = client.post("/forget", json={"doc_ids": ["d3"]}, headers=auth(service, "editor")).json()
        assert client.get(f"/jobs/{job['job_id']}", headers=auth(service, "admin", "other")).status_code == 403
        assert client.get("/documents/d0", headers=auth(service, "admin", "other")).status_code == 404
        assert client.post("/search", json={"query": "fox"}, headers=auth(service, "reader", "other")).json()[
            "hits"] == []  # a new tenant starts empty
        assert client.get("/receipts", headers=auth(service, "reader", "other")).json() == []


def test_search_documents_and_forget_end_to_end(service: dict) -> None:
    reader, editor, admin = (auth(service, r) for r in ROLES)
    with TestClient(create_app(service["home"])) as client:
        for retriever in ("bm25", "dense", "rrf"):
            hits = client.post("/search", json={"query": "cardano staking rewards", "retriever": retriever,
                                                "k": 12}, headers=reader).json()["hits"]
            assert {h["doc_id"] for h in hits} >= {"d2"} and all("snippet" in h and "title" in h for h in hits)
        added = client.post("/documents", json={"documents": [
            {"id": "d20", "title": "new", "text": "zanzibar cloves export", "owner": "u1"}]}, headers=editor)
        assert added.json() == {"added": 1, "replaced": 0}
        assert client.post("/search", json={"query": "zanzibar"}, headers=reader).json()["hits"][0]["doc_id"] == "d20"
        replaced = client.post("/documents", json={"documents": [{"id": "d20", "text": "pemba cloves"}]},
                               headers=editor)
        assert replaced.json() == {"added": 0, "replaced": 1}
        assert client.post("/search", json={"query": "zanzibar"}, headers=reader).json()["hits"] == []
        job = client.post("/forget", json={"owners": ["u1"], "reason": "user request"}, headers=editor)
        assert job.status_code == 202 and job.json()["state"] == "queued"
        done = wait_job(client, job.json()["job_id"], reader)
        assert done["state"] == "done" and done["level"] == "deleted", done
        assert done["step"] == "scrub" and done["steps_done"] == 7  # resolve, store, bm25, dense, cache, verify, scrub
        hits = client.post("/search", json={"query": "cardano staking rewards plutus", "k": 12, "retriever": "rrf"},
                           headers=reader).json()["hits"]
        assert not {h["doc_id"] for h in hits} & {"d0", "d2", "d4", "d10"}
        assert client.get("/documents/d2", headers=reader).status_code == 404
        receipts = client.get("/receipts", headers=reader).json()
        assert [r["level"] for r in receipts] == ["deleted"] and receipts[0]["n_docs"] == 4
        detail = client.get(f"/receipts/{done['request_id']}", headers=reader).json()
        assert detail["verification"]["all_passed"] and len(detail["entry_hash"]) == 64
        assert client.get("/verify", headers=admin).json()["ok"]
        again = client.post("/documents", json={"documents": [{"id": "d2x", "text": make_docs()[2].text,
                                                               "title": make_docs()[2].title}]}, headers=editor)
        assert again.status_code == 409 and "forgotten earlier" in again.json()["detail"]
    jobs_db = (service["home"] / "jobs.db").read_bytes()
    assert b'"u1"' not in jobs_db  # a finished job keeps no raw id


def test_searches_during_a_forget_never_return_it_after_done(service: dict) -> None:
    reader, editor = auth(service, "reader"), auth(service, "editor")
    gone = {"d0", "d2", "d4", "d10"}
    seen_after_done: list[str] = []
    done_at: list[float] = []
    with TestClient(create_app(service["home"])) as client:
        stop = threading.Event()

        def searcher() -> None:
            while not stop.is_set():
                hits = client.post("/search", json={"query": "cardano rewards plutus fox", "k": 12},
                                   headers=reader).json()["hits"]
                ended = time.time()
                if done_at and ended > done_at[0]:
                    seen_after_done.extend(h["doc_id"] for h in hits if h["doc_id"] in gone)

        threads = [threading.Thread(target=searcher) for _ in range(3)]
        for t in threads:
            t.start()
        job = client.post("/forget", json={"owners": ["u1"]}, headers=editor).json()
        result = wait_job(client, job["job_id"], reader)
        done_at.append(time.time())
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
    assert result["state"] == "done" and seen_after_done == []


def test_a_queued_job_survives_a_restart(service: dict) -> None:
    editor, reader = auth(service, "editor"), auth(service, "reader")
    with TestClient(create_app(service["home"], start_worker=False)) as client:  # the server dies before running it
        job = client.post("/forget", json={"doc_ids": ["d5"]}, headers=editor).json()
        assert client.get(f"/jobs/{job['job_id']}", headers=reader).json()["state"] == "queued"
    with TestClient(create_app(service["home"])) as client:
        assert wait_job(client, job["job_id"], reader)["state"] == "done"
        assert client.get("/documents/d5", headers=reader).status_code == 404


def test_a_job_killed_mid_run_is_resumed_on_restart(service: dict) -> None:
    from lethe.pipelines.forget import InjectedCrash, forget
    from lethe.serve.jobs import JobStore
    from lethe.types import ForgetRequest

    editor, reader = auth(service, "editor"), auth(service, "reader")
    with TestClient(create_app(service["home"], start_worker=False)) as client:
        job = client.post("/forget", json={"owners": ["u2"]}, headers=editor).json()
    jobs = JobStore(service["home"])
    jobs.start(job["job_id"])  # the server died while the job ran: state running, the ledger request pending
    jobs.close()
    with Workspace(service["home"] / "tenants" / "acme", show_progress=False) as ws, pytest.raises(InjectedCrash):
        forget(ws, ForgetRequest(owners=("u2",)), crash_after="index:bm25")
    with TestClient(create_app(service["home"])) as client:
        done = wait_job(client, job["job_id"], reader)
        assert done["state"] == "done" and done["level"] == "deleted"
        assert "index:bm25" not in {done["step"]} and done["steps_done"] == 4  # dense, cache, verify, scrub: resumed
        assert client.get("/verify", headers=auth(service, "admin")).json()["ok"]


BAD = [
    ("post", "/search", "{not json", "json"),
    ("post", "/search", {"query": "fox", "colour": "red"}, "colour"),
    ("post", "/search", {"query": ""}, "query"),
    ("post", "/search", {"query": "x" * 100_000}, "query"),
    ("post", "/search", {"query": "fox", "k": 0}, "k"),
    ("post", "/search", {"query": "fox", "k": 10**9}, "k"),
    ("post", "/search", {"query": "fox", "retriever": "magic"}, "retriever"),
    ("post", "/search", {"query": "fox", "rerank": {"model": "no-such-model"}}, "no-such-model"),
    ("post", "/documents", {"documents": []}, "documents"),
    ("post", "/documents", {"documents": [{"id": "a b", "text": "x"}]}, "id"),
    ("post", "/documents", {"documents": [{"id": "z", "text": ""}]}, "text"),
    ("post", "/forget", {"doc_ids": ["nope-1", "d3"]}, "doc_ids"),
    ("post", "/forget", {"owners": ["ghost"]}, "owners"),
    ("post", "/forget", {}, "doc_ids"),
    ("post", "/forget", {"doc_ids": ["d3"], "unlearn": "magic"}, "unlearn"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), BAD, ids=[f"{b[1]}-{b[3]}" for b in BAD])
def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(service: dict, method: str, path: str,
                                                                 body: object, field: str) -> None:
    headers = auth(service, "admin")
    with TestClient(create_app(service["home"], start_worker=False)) as client:
        kwargs = {"content": body, "headers": {**headers, "Content-Type": "application/json"}} if isinstance(
            body, str) else {"json": body, "headers": headers}
        response = getattr(client, method)(path, **kwargs)
        assert 400 <= response.status_code < 500, response.text
        assert field in response.text
        assert client.get("/health").status_code == 200  # still serving
        assert client.get("/documents/d3", headers=headers).status_code == 200
    with Workspace(service["home"] / "tenants" / "acme", show_progress=False, create=False) as ws:
        assert not ws.ledger.entries() and len(ws.store) == 12


def test_keys_cli_prints_the_key_last_and_stores_its_hash(tmp_path: Path, monkeypatch, capsys) -> None:
    from lethe.cli import main

    monkeypatch.setattr("sys.argv", ["lethe", "keys", "add", "--home", str(tmp_path / "s"), "--tenant", "t1",
                                     "--role", "editor"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    key = capsys.readouterr().out.strip().splitlines()[-1]
    store = KeyStore(tmp_path / "s")
    try:
        assert store.lookup(key).role == "editor" and store.lookup(key).tenant == "t1"
    finally:
        store.close()
    assert key.encode() not in (tmp_path / "s" / "keys.db").read_bytes()
    assert (tmp_path / "s" / "tenants" / "t1" / "store.db").exists()
    monkeypatch.setattr("sys.argv", ["lethe", "keys", "add", "--home", str(tmp_path / "s"), "--tenant", "T 1"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "tenant name" in capsys.readouterr().err


def test_evaluation_points_before_and_after_forgetting(tmp_path: Path) -> None:
    from lethe.data import load_dataset
    from tests.test_cli import write_beir

    home = tmp_path / "serve"
    with Workspace(home / "tenants" / "acme", show_progress=False) as ws:
        ws.ingest(load_dataset(str(write_beir(tmp_path / "tiny"))))
        ws.build_bm25()
    store = KeyStore(home)
    key = {"Authorization": f"Bearer {store.add('acme', 'editor')}"}
    store.close()
    with TestClient(create_app(home)) as client:
        first = client.get("/evaluation", headers=key).json()
        assert first["available"] and first["measure"] == "nDCG@10"
        assert [p["label"] for p in first["points"]] == ["before forgetting"] and 0 < first["points"][0]["value"] <= 1
        job = client.post("/forget", json={"owners": ["u1"]}, headers=key).json()
        done = wait_job(client, job["job_id"], key)
        points = client.get("/evaluation", headers=key).json()["points"]
        assert [p["label"] for p in points] == ["before forgetting", f"after {done['request_id'][:8]}"]


def test_jobs_can_run_in_a_child_process(service: dict) -> None:
    reader, editor = auth(service, "reader"), auth(service, "editor")
    with TestClient(create_app(service["home"], job_process=True)) as client:
        job = client.post("/forget", json={"doc_ids": ["d7"]}, headers=editor).json()
        done = wait_job(client, job["job_id"], reader, timeout=120)
        assert done["state"] == "done" and done["steps_done"] == 7, done
        hits = client.post("/search", json={"query": "deep learning retrieval", "k": 12}, headers=reader).json()
        assert "d7" not in {h["doc_id"] for h in hits["hits"]}
