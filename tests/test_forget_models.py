"""`lethe forget --unlearn`: every model that saw the data, parents first, journaled, with resume."""

from __future__ import annotations

import pytest

from lethe.embedding.train import EmbedTrainConfig
from lethe.pipelines.forget import InjectedCrash, forget, resume
from lethe.pipelines.train import read_examples, score_pools, train_embedder, train_teacher, training_data
from lethe.ranking.cross_encoder import CETrainConfig
from lethe.types import ForgetRequest
from lethe.unlearning.base import UnlearnConfig
from tests.test_train import tiny_dataset

CFG = UnlearnConfig(steps=2, lr=1e-3, forget_batch=2, retain_batch=2)


def train_tiny_models(ws) -> None:  # noqa: ANN001
    """Teacher -> score cache -> student, and a dense index built with the student."""
    data = training_data(ws, tiny_dataset(), "train", pool_depth=8)
    train_teacher(ws, data, "teacher", "tiny", CETrainConfig(epochs=1, lr=1e-3, queries_per_step=3,
                                                             max_length=32), n_negatives=3)
    cache, _ = score_pools(ws, data, "teacher", show_progress=False)
    cfg = EmbedTrainConfig(recipe="dse", epochs=1, lr=1e-3, batch_size=3, max_length=32)
    student, _, _ = train_embedder(ws, data, str(cache), cfg, "student", "tiny", n_negatives=2, ratio=None)
    ws.model_index(str(student))


@pytest.fixture
def trained(workspace):  # noqa: ANN201
    """The tiny workspace with teacher, score cache, student and the student's dense index."""
    train_tiny_models(workspace)
    return workspace


def _active(ws, name: str) -> str:  # noqa: ANN001
    return str(ws.registry.get(name))


def test_forget_with_unlearning_replaces_every_model(trained) -> None:  # noqa: ANN001
    ws = trained
    old_paths = {m: ws.registry.resolve_path(ws.registry.get(m)) for m in ("teacher", "student")}
    rep = forget(ws, ForgetRequest(("d0",)), unlearn="auto", unlearn_cfg=CFG)
    r = rep.receipt
    assert rep.level == "deleted" and r["models_still_trained_on_data"] == [] and rep.reached
    by_model = {m["model"]: m for m in r["unlearning"]}
    # no audit reference registered with these tiny models: relabel cannot be checked, so auto retrains
    assert by_model["teacher@v1"]["new"] == "teacher@v2" and by_model["teacher@v1"]["level"] == "exact"
    assert by_model["teacher@v1"]["escalated_from"] == "relabel"
    assert by_model["teacher-scores@v1"]["level"] == "exact"
    assert by_model["teacher-scores@v1"]["rescored_by"] == "teacher@v2"  # teacher before its cache
    assert by_model["student@v1"]["new"] == "student@v2"
    steps = rep.steps_run
    assert steps.index("model:teacher@v1") < steps.index("model:teacher-scores@v1") < steps.index("model:student@v1")
    assert steps.index("model:student@v1") < steps.index("store") < steps.index("reindex:student@v1")
    assert r["model_level"] == "exact"
    # old weights destroyed, new versions active, lineage free of d0, groups recorded without it
    for m, path in old_paths.items():
        assert not path.exists() and not ws.registry.get(f"{m}@v1").active
        assert "d0" not in ws.registry.lineage_of(_active(ws, m)).doc_ids
        assert all("d0" not in (e.positive, *e.negatives) for e in read_examples(ws, _active(ws, m)))
    # the student's dense index was re-embedded with the new student and the old one retired
    assert r["reindexed"] == {"dense-student-v1": "dense-student-v2"}
    names = {i.ref.name for i in ws.indexes()}
    assert "dense-student-v2" in names and "dense-student-v1" not in names
    assert r["verification"]["all_passed"] and "dense-student-v2" in r["verification"]["indexes"]
    assert forget(ws, ForgetRequest(("d0",)), unlearn="grad_diff").noop


def test_an_unaudited_approximate_method_is_never_called_unlearned(trained) -> None:  # noqa: ANN001
    rep = forget(trained, ForgetRequest(("d0",)), unlearn="grad_diff", unlearn_cfg=CFG)
    by_model = {m["model"]: m for m in rep.receipt["unlearning"]}
    assert by_model["teacher@v1"]["level"] == "unverified" and by_model["teacher@v1"]["audit"] is None
    assert {"teacher@v1", "student@v1"} <= set(rep.receipt["models_still_trained_on_data"])
    assert rep.receipt["model_level"].startswith("not reached") and not rep.reached


def test_relabel_without_a_reference_has_no_target(trained) -> None:  # noqa: ANN001
    rep = forget(trained, ForgetRequest(("d0",)), unlearn="relabel", unlearn_cfg=CFG)
    by_model = {m["model"]: m for m in rep.receipt["unlearning"]}
    # no registered non-member pair to measure the gain of training on: said, not faked
    for model in ("teacher@v1", "student@v1"):
        assert by_model[model]["level"] == "not_unlearned" and "no target" in by_model[model]["why"]
        assert model in rep.receipt["models_still_trained_on_data"]


def test_forget_with_retrain_is_exact_and_bad_methods_are_refused(trained) -> None:  # noqa: ANN001
    from lethe.errors import ForgetError

    with pytest.raises(ForgetError, match="cannot replace registry models"):
        forget(trained, ForgetRequest(("d0",)), unlearn="uld")
    assert not trained.ledger.pending_requests()  # refused before anything was touched
    rep = forget(trained, ForgetRequest(("d0",)), unlearn="retrain")
    assert rep.receipt["model_level"] == "exact"
    assert {m["level"] for m in rep.receipt["unlearning"]} == {"exact"}


def test_forget_without_unlearning_still_lists_the_models(trained) -> None:  # noqa: ANN001
    r = forget(trained, ForgetRequest(("d0",))).receipt
    assert set(r["models_still_trained_on_data"]) >= {"teacher@v1", "teacher-scores@v1", "student@v1"}
    assert r["model_level"] == "not reached: weight unlearning not run"


@pytest.mark.parametrize("step", ["resolve", "model:teacher@v1", "model:teacher-scores@v1", "model:student@v1",
                                  "store", "reindex:student@v1", "retire", "verify"])
def test_crash_at_each_model_step_then_resume(trained, step: str) -> None:  # noqa: ANN001
    ws = trained
    with pytest.raises(InjectedCrash):
        forget(ws, ForgetRequest(("d0",)), crash_after=step, unlearn="auto", unlearn_cfg=CFG)
    if step == "resolve":
        assert ws.registry.get("teacher").version == 1
    reports = resume(ws, unlearn_cfg=CFG)
    assert len(reports) == 1
    rep = reports[0]
    assert step not in rep.steps_run  # finished steps are not redone
    assert rep.level == "deleted" and rep.receipt["models_still_trained_on_data"] == []
    assert _active(ws, "teacher") == "teacher@v2" and _active(ws, "student") == "student@v2"  # no double versions
    assert not ws.ledger.pending_requests()


def test_ofmu_and_label_free_laf_through_forget(trained) -> None:  # noqa: ANN001
    from lethe.pipelines.train import EXAMPLES_FILE

    ws = trained
    rep = forget(ws, ForgetRequest(("d0",)), unlearn="ofmu", unlearn_cfg=CFG)
    by_model = {m["model"]: m for m in rep.receipt["unlearning"]}
    assert by_model["teacher@v1"]["method"] == "ofmu" and by_model["student@v1"]["method"] == "ofmu"
    assert by_model["student@v1"]["level"] == "unverified"  # no audit reference: never called unlearned
    # label_mixup on a judgement, sae on a document: bi-encoders only, never called unlearned without an audit
    rep = forget(ws, ForgetRequest(labels=(("q2", "d2"),)), unlearn="label_mixup", unlearn_cfg=CFG)
    by_model = {m["model"]: m for m in rep.receipt["unlearning"]}
    assert by_model["student@v2"]["method"] == "label_mixup" and by_model["student@v2"]["level"] == "unverified"
    assert by_model["teacher@v2"]["level"] == "not_unlearned" and "towers" in by_model["teacher@v2"]["why"]
    assert not rep.reached  # neither is verified: the receipt says so
    # sae with the student's registered SAE (fitted on the collection, lineage = the documents it saw): the
    # method reads its features, and the SAE itself is refitted without d5 on the unlearned student's embeddings
    from lethe.pipelines.sae import sae_of, train_sae

    sae = train_sae(ws, "student@v3")
    assert "d5" in ws.registry.lineage_of(sae).doc_ids and sae_of(ws, ws.registry.get("student@v3")) == sae
    rep = forget(ws, ForgetRequest(("d5",)), unlearn="sae", unlearn_cfg=CFG)
    by_model = {m["model"]: m for m in rep.receipt["unlearning"]}
    assert by_model["student@v3"]["method"] == "sae" and by_model["student@v3"]["sae"] == "registered"
    refit = by_model[str(sae)]
    assert refit["level"] == "exact" and refit["embedded_by"] == by_model["student@v3"]["new"]
    assert "d5" not in ws.registry.lineage_of(refit["new"]).doc_ids and not ws.registry.get(str(sae)).active
    assert sae_of(ws, ws.registry.get(by_model["student@v3"]["new"])) == ws.registry.get(refit["new"])
    # a student whose training pairs are gone: only laf can act, on the documents alone, and says it is unverified
    (ws.registry.resolve_path(ws.registry.get("student")) / EXAMPLES_FILE).unlink()
    rep = forget(ws, ForgetRequest(("d1",)), unlearn="laf", unlearn_cfg=CFG)
    by_model = {m["model"]: m for m in rep.receipt["unlearning"]}
    student = by_model["student@v4"]
    assert student["method"] == "laf" and student["level"] == "unverified" and "not recorded" in student["why"]
    assert not (ws.registry.resolve_path(ws.registry.get(student["new"])) / EXAMPLES_FILE).exists()
    assert "d1" not in ws.registry.lineage_of(student["new"]).doc_ids
    assert by_model["teacher@v2"]["level"] == "not_unlearned" and "towers" in by_model["teacher@v2"]["why"]
    assert "student@v4" in rep.receipt["models_still_trained_on_data"]

def test_forgetting_a_label_keeps_the_document_and_stays_forgotten(trained) -> None:  # noqa: ANN001
    from lethe.pipelines.forget import trained_labels

    ws = trained
    assert ("q1", "d0") in trained_labels(ws)
    rep = forget(ws, ForgetRequest(labels=(("q1", "d0"),), reason="withdrawn click"), unlearn="retrain")
    r = rep.receipt
    assert rep.reached and r["n_labels"] == 1 and r["n_docs"] == 0 and len(r["label_hashes"]) == 1
    assert r["verification"]["labels_absent"] and r["model_level"] == "exact"
    assert {m["model"] for m in r["unlearning"]} >= {"teacher@v1", "student@v1"}
    assert ("q1", "d0") not in trained_labels(ws) and ("q1", "d1") in trained_labels(ws)
    assert "d0" in ws.store and "d0" in ws.registry.lineage_of(_active(ws, "student")).doc_ids  # the document stays
    # the judgement is a tombstone: training data built again from the same qrels leaves it out
    data = training_data(ws, tiny_dataset(), "train", pool_depth=8)
    assert "d0" not in data.qrels["q1"] and "d1" in data.qrels["q1"]
    assert forget(ws, ForgetRequest(labels=(("q1", "d0"),), reason="withdrawn click"), unlearn="retrain").noop
    from lethe.errors import ForgetError

    with pytest.raises(ForgetError, match="label"):
        ForgetRequest(labels=(("q1", ""),))
    with pytest.raises(ForgetError, match="document is unknown"):
        forget(ws, ForgetRequest(labels=(("q1", "nope"),)), unlearn="retrain")

