"""Shared fixtures: a tiny corpus with owners and a tiny random BERT loaded through the registry."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lethe.types import Doc, Query  # noqa: E402

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a fast auburn fox leaped above a sleepy hound",
    "cardano staking pools distribute rewards every epoch",
    "ethereum smart contracts run on the virtual machine",
    "plutus scripts validate transactions on cardano",
    "nutrition facts about vitamin d and bone health",
    "vitamin c supplements and the common cold",
    "deep learning models for information retrieval",
    "bm25 is a strong baseline for ad hoc retrieval",
    "dense retrievers encode queries and documents into vectors",
    "forgetting a user means deleting every document they wrote",
    "hash chains make a ledger tamper evident",
]
OWNERS = ["u1", "u2", "u1", "u3", "u1", "u2", "u4", "u3", "u5", "u5", "u1", "u6"]


def make_docs() -> list[Doc]:
    """Twelve documents; doc d2 has two owners."""
    docs = []
    for i, (t, o) in enumerate(zip(TEXTS, OWNERS)):
        owners = (o, "u9") if i == 2 else (o,)
        docs.append(Doc(id=f"d{i}", text=t, title=f"title {i}", owners=owners))
    return docs


def make_queries() -> list[Query]:
    return [Query("q1", "fox jumping", ("u2",)), Query("q2", "cardano rewards", ("u1",)),
            Query("q3", "vitamin health", ("u7",))]


@pytest.fixture
def docs() -> list[Doc]:
    return make_docs()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT + WordPiece tokenizer trained on the test corpus (built once)."""
    from lethe.registry.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model", TEXTS * 3)


def make_home(root: Path, tiny_bert_dir: Path, name: str = "home") -> Path:
    """``root/name``: a closed workspace with the tiny corpus, BM25 and a dense index of the tiny BERT
    (registered as ``tiny`` from a copy at ``root/tiny-model``)."""
    from lethe.pipelines.workspace import Workspace
    from lethe.registry import ModelSpec

    model = root / "tiny-model"
    if not model.exists():
        shutil.copytree(tiny_bert_dir, model)
    home = root / name
    with Workspace(home, show_progress=False) as ws:
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{model}"))
        ws.store.ingest(make_docs(), make_queries())
        ws.build_bm25()
        ws.build_dense(encoder="tiny")
    return home


@pytest.fixture
def workspace(tmp_path: Path, tiny_bert_dir: Path):
    """A workspace holding the tiny corpus, BM25 and a dense index built with the tiny BERT."""
    from lethe.pipelines.workspace import Workspace
    from lethe.registry import ModelSpec

    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_bert_dir, model_dir)
    ws = Workspace(tmp_path / "home", show_progress=False)
    ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{model_dir}"))
    ws.store.ingest(make_docs(), make_queries())
    ws.build_bm25()
    ws.build_dense(encoder="tiny")
    yield ws
    ws.close()
