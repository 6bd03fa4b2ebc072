"""ONNX Runtime encoding (fp32 and int8) against the torch encoder, on the tiny random BERT."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lethe.cli import app
from lethe.embedding import EmbeddingCache, SentenceTransformerEncoder
from lethe.embedding.encoders import make_encoder
from lethe.embedding.onnx import OnnxEncoder, length_batches, read_head, require_onnxruntime, split_backend
from lethe.errors import LetheError
from lethe.pipelines.workspace import Workspace
from lethe.registry import ModelSpec
from tests.conftest import TEXTS
from tests.test_cli import write_beir

#: mixed lengths: one word, the corpus, and texts past the tiny model's 128-token limit
MIXED = ["fox", *TEXTS, " ".join(TEXTS), " ".join(TEXTS * 4), "vitamin", "a b c d e f g"]


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir: Path):  # noqa: ANN201
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_bert_dir), device="cpu")


@pytest.fixture(scope="module")
def torch_vecs(tiny_model) -> np.ndarray:  # noqa: ANN001
    return SentenceTransformerEncoder(tiny_model, "tiny@v1").encode_documents(MIXED)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_equals_torch_in_order(tiny_model, torch_vecs: np.ndarray) -> None:  # noqa: ANN001
    enc = make_encoder(tiny_model, "tiny@v1", "onnx", batch_size=4)  # several length buckets
    assert isinstance(enc, OnnxEncoder) and enc.version == "tiny@v1+onnx"
    vecs = enc.encode_documents(MIXED)
    assert vecs.shape == torch_vecs.shape and vecs.dtype == np.float32
    assert np.abs(vecs - torch_vecs).max() < 1e-4
    assert cosines(vecs, torch_vecs).min() > 0.99999
    one_by_one = np.vstack([enc.encode_documents([t]) for t in MIXED])  # bucketing restores the order
    assert np.abs(one_by_one - vecs).max() < 1e-4
    queries = enc.encode_queries(["fox jumping", "cardano rewards"])
    ref = SentenceTransformerEncoder(tiny_model, "tiny@v1").encode_queries(["fox jumping", "cardano rewards"])
    assert np.abs(queries - ref).max() < 1e-4
    assert enc.encode_documents([]).shape == (0, enc.dim)


def test_int8_stays_close_to_torch(tiny_model, torch_vecs: np.ndarray) -> None:  # noqa: ANN001
    # int8 weights, one scale per output channel: MiniLM keeps cosine ~0.99 (min) to torch on SciFact;
    # the random 32-d tiny BERT has no outlier activations to lose and stays closer still
    enc = make_encoder(tiny_model, "tiny@v1", "onnx-int8", threads=2)
    assert enc.version == "tiny@v1+onnx-int8"
    vecs = enc.encode_documents(MIXED)
    assert cosines(vecs, torch_vecs).min() > 0.995  # measured: 0.99997
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


def test_length_batches_cover_every_text_longest_first() -> None:
    batches = length_batches(["aa", "a", "aaaa", "aaa", ""], 2)
    assert batches == [[2, 3], [0, 1], [4]]


def test_backend_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert split_backend("minilm@v1+onnx-int8") == ("minilm@v1", "onnx-int8")
    assert split_backend("minilm") == ("minilm", "torch")
    with pytest.raises(LetheError, match="unknown encoder backend"):
        split_backend("minilm+tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(LetheError, match=r"pip install 'lethe-ir\[onnx\]'"):
        require_onnxruntime()


def test_unsupported_module_stacks_are_refused() -> None:
    class Transformer: ...

    class Pooling:
        pooling_mode = "mean"

    class Dense: ...

    with pytest.raises(LetheError, match=r"not \['Transformer', 'Pooling', 'Dense'\]"):
        read_head([Transformer(), Pooling(), Dense()])
    Pooling.pooling_mode = "max"
    with pytest.raises(LetheError, match="not 'max'"):
        read_head([Transformer(), Pooling()])


def test_cache_keys_differ_by_backend(workspace, tmp_path: Path) -> None:  # noqa: ANN001
    from lethe.store import content_hash

    versions = {b: workspace.encoder("tiny", backend=b).version for b in ("torch", "onnx", "onnx-int8")}
    assert versions == {"torch": "tiny@v1", "onnx": "tiny@v1+onnx", "onnx-int8": "tiny@v1+onnx-int8"}
    assert workspace.encoder("tiny@v1+onnx") is workspace.encoder("tiny", backend="onnx")
    with pytest.raises(LetheError, match="names backend"):
        workspace.encoder("tiny+onnx", backend="onnx-int8")
    hashes = [content_hash(d) for d in workspace.store.iter_docs()]
    assert len(workspace.cache.get_many("tiny@v1", hashes)) == len(hashes)  # the torch build cached them
    assert workspace.cache.get_many("tiny@v1+onnx", hashes) == {}  # never served to another backend
    cache = EmbeddingCache(tmp_path / "c.db")
    cache.put_many("tiny@v1+onnx-int8", hashes[:1], np.ones((1, 32), np.float32))
    assert cache.get_many("tiny@v1", hashes[:1]) == {} and cache.get_many("tiny@v1+onnx", hashes[:1]) == {}
    cache.close()


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def cli_home(tmp_path: Path, tiny_bert_dir: Path, backend: str) -> str:
    """A workspace built by ``lethe index --encoder tiny --encoder-backend backend``."""
    model = tmp_path / "tiny-model"
    if not model.exists():
        shutil.copytree(tiny_bert_dir, model)
    home = tmp_path / f"home-{backend}"
    with Workspace(home, show_progress=False) as ws:
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{model}"))
    data = tmp_path / "data" if (tmp_path / "data").exists() else write_beir(tmp_path / "data")
    invoke("index", "--data", str(data), "--home", str(home), "--encoder", "tiny", "--encoder-backend", backend,
           "--threads", "1")
    return str(home)


def dense_ids(home: str, query: str) -> list[str]:
    with Workspace(home, show_progress=False) as ws:
        return [h.doc_id for h in ws.load_index("dense").search([query], 12)[0]]


def test_workspace_index_with_onnx_searches_and_forgets_like_torch(tmp_path: Path, tiny_bert_dir: Path) -> None:
    homes = {b: cli_home(tmp_path, tiny_bert_dir, b) for b in ("torch", "onnx")}
    with Workspace(homes["onnx"], show_progress=False) as ws:
        index = ws.load_index("dense")
        assert index.encoder_version == "tiny@v1+onnx" and isinstance(index.encoder, OnnxEncoder)
        assert ws.registry.get("dense").manifest["params"]["encoder_version"] == "tiny@v1+onnx"
    for query in ("cardano rewards", "a fox jumping over a dog"):
        assert dense_ids(homes["onnx"], query) == dense_ids(homes["torch"], query)
    for home in homes.values():
        invoke("forget", "--doc", "d2", "--home", home, "--reason", "test")
        assert "verification passed" in invoke("verify", "--home", home)
        assert "d2" not in dense_ids(home, "cardano staking pools distribute rewards every epoch")
    assert dense_ids(homes["onnx"], "cardano rewards") == dense_ids(homes["torch"], "cardano rewards")
    invoke("index", "--home", homes["onnx"])  # a rebuild keeps the recorded backend
    with Workspace(homes["onnx"], show_progress=False) as ws:
        assert ws.load_index("dense").encoder_version == "tiny@v1+onnx"


def test_onnx_backend_choice_is_checked_before_any_write(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["index", "--data", str(tmp_path / "nowhere"), "--home", str(tmp_path / "h"),
                                      "--encoder-backend", "tensorrt"])
    assert isinstance(result.exception, LetheError) and "--encoder-backend" in str(result.exception)
    assert not (tmp_path / "h").exists()


def test_importing_the_workspace_does_not_import_onnxruntime() -> None:
    code = "import sys, lethe.pipelines.workspace, lethe.cli; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
