"""The web page at `/` in a real Chromium (Playwright): search, forget a user with a reason from a result,
watch the job until done, search again, receipts, verify, the before/after chart, and a reader key's 403.

Needs Playwright (the ``dev`` extra) and Debian's ``chromium`` (``.ci/run`` installs it). Set
``LETHE_SCREENSHOT=1`` to rewrite ``docs/img/serve.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright: pip install playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="browser tests need Chromium: apt-get install chromium")

from lethe.data import load_dataset  # noqa: E402
from lethe.pipelines.workspace import Workspace  # noqa: E402
from lethe.registry import ModelSpec  # noqa: E402
from lethe.serve.app import create_app  # noqa: E402
from lethe.serve.keys import KeyStore  # noqa: E402
from tests.test_cli import write_beir  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "serve.png"
U1_DOCS = {"d0", "d2", "d4", "d10"}


@pytest.fixture
def server(tmp_path: Path, tiny_bert_dir: Path):  # noqa: ANN201
    """`lethe serve` on a free port: tenant ``acme`` (the tiny corpus with test qrels, BM25 + tiny dense)."""
    home = tmp_path / "serve"
    model = tmp_path / "tiny-model"
    shutil.copytree(tiny_bert_dir, model)
    with Workspace(home / "tenants" / "acme", show_progress=False) as ws:
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{model}"))
        ws.ingest(load_dataset(str(write_beir(tmp_path / "tiny"))))  # with a test split: the chart has points
        ws.build_bm25()
        ws.build_dense(encoder="tiny")
    store = KeyStore(home)
    keys = {role: store.add("acme", role) for role in ("reader", "admin")}
    store.close()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(home), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield {"url": f"http://127.0.0.1:{sock.getsockname()[1]}/", "keys": keys}
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def search(page, query: str, retriever: str = "bm25", k: int = 10) -> set[str]:  # noqa: ANN001
    """Run a search from the form; the doc ids of the results it rendered."""
    results = page.locator("#results")
    before = results.get_attribute("data-seq")
    page.fill("#query", query)
    page.select_option("#retriever", retriever)
    page.fill("#k", str(k))
    page.click("#search-btn")
    page.wait_for_function("([seq, q, r, k]) => { const d = document.getElementById('results').dataset; "
                           "return d.seq !== seq && d.query === q && d.retriever === r && d.k === k; }",
                           arg=[before, query, retriever, str(k)])
    return set(results.locator("[data-testid=result]").evaluate_all("els => els.map(e => e.dataset.docId)"))


def test_the_page_searches_forgets_a_user_and_verifies(server: dict) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(server["url"])
            expect(page).to_have_title(re.compile("lethe"))
            expect(page.locator("#key-status")).to_contain_text("Paste your API key")

            page.fill("#api-key", "lethe_not-a-key")  # a wrong key: the API's detail is shown
            page.click("#save-key")
            expect(page.locator("#key-status")).to_contain_text("unknown API key")
            page.fill("#api-key", server["keys"]["admin"])
            page.click("#save-key")
            expect(page.locator("#key-status")).to_contain_text("Key accepted")
            expect(page.locator("[data-testid=eval-point]")).to_have_count(1)  # "before forgetting"

            assert {"d2", "d4"} <= search(page, "cardano rewards")
            assert search(page, "cardano rewards plutus fox", "rrf", 12) >= U1_DOCS

            hit = page.locator('[data-testid=result][data-doc-id="d2"]')
            expect(hit.locator("[data-testid=owners]")).to_contain_text("u1")
            hit.locator('[data-testid=forget-owner][data-owner="u1"]').click()
            expect(hit.locator("[data-testid=forget-summary]")).to_contain_text("Every document")
            hit.locator("[data-testid=confirm-forget]").click()  # no reason yet: asked for one, nothing sent
            expect(hit.locator("[data-testid=forget-error]")).to_contain_text("reason")
            expect(page.locator("[data-testid=job]")).to_have_count(0)
            hit.locator("[data-testid=reason]").fill("user u1 asked to be forgotten")
            hit.locator("[data-testid=confirm-forget]").click()

            job = page.locator("[data-testid=job]")
            expect(job).to_have_count(1)
            expect(job.locator("[data-testid=job-state]")).to_have_text("done", timeout=30_000)
            expect(job.locator("[data-testid=job-detail]")).to_contain_text("level deleted")

            assert not search(page, "cardano rewards") & U1_DOCS
            found = search(page, "cardano rewards plutus fox", "rrf", 12)
            assert len(found) == 8 and not found & U1_DOCS, found
            assert not search(page, "cardano rewards plutus fox", "rrf", 4) & U1_DOCS  # (the screenshot's)

            receipt = page.locator("[data-testid=receipt]")
            expect(receipt).to_have_count(1)
            expect(receipt).to_contain_text("deleted")
            expect(receipt).to_contain_text("user u1 asked to be forgotten")
            receipt.click()
            detail = page.locator("[data-testid=receipt-detail]")
            expect(detail).to_contain_text("all checks passed")
            expect(detail.locator("dd").nth(2)).to_have_text("4")  # documents forgotten

            page.click("#verify-btn")
            expect(page.locator("#verify-result")).to_have_attribute("data-ok", "true", timeout=30_000)
            expect(page.locator("[data-testid=verify-verdict]")).to_contain_text("OK")
            expect(page.locator("[data-testid=eval-point]")).to_have_count(2)  # before, after the job
            if os.environ.get("LETHE_SCREENSHOT") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)

            page.fill("#api-key", server["keys"]["reader"])  # a reader may search but not verify
            page.click("#save-key")
            expect(page.locator("#key-status")).to_contain_text("Key accepted")
            page.click("#verify-btn")
            expect(page.locator("[data-testid=verify-error]")).to_contain_text("needs an admin key")
            assert problems == [], problems
        finally:
            browser.close()
