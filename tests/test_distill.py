"""Distilling a teacher's scores into a cross-encoder with MarginMSE: the loss against sentence-transformers'
own, the trainer, lineage, and exact forgetting of a distilled model (teacher -> scores -> student CE)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lethe.pipelines.forget import forget
from lethe.pipelines.train import read_examples, score_pools, train_teacher, training_data
from lethe.ranking.cross_encoder import CETrainConfig, Group, pair_logits, train_cross_encoder
from lethe.training.losses import margin_mse
from lethe.types import ForgetRequest
from tests.test_train import tiny_dataset

QUERY = ["cats purr", "dogs bark loudly", "fish swim"]
POS = ["a cat purrs on the mat", "the dog barks at night", "fish swim in the sea"]
NEG1 = ["stock markets fell", "a recipe for bread", "the train was late"]
NEG2 = ["rain in spain", "a cat sleeps", "dogs and fish"]


def _cross_encoder(tiny_bert_dir: Path):  # noqa: ANN202
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    return CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")


def test_margin_mse_matches_sentence_transformers(tiny_bert_dir: Path) -> None:
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    model = _cross_encoder(tiny_bert_dir)
    model.model.eval()
    teacher = torch.tensor([[3.0, 1.0, -2.0], [0.5, 0.7, 0.1], [2.0, -1.0, 0.0]])
    reference = MarginMSELoss(model)([QUERY, POS, NEG1, NEG2], teacher)
    groups = [(q, [p, n1, n2]) for q, p, n1, n2 in zip(QUERY, POS, NEG1, NEG2)]
    logits = pair_logits(model, [(q, d) for q, ds in groups for d in ds], 512)
    ours = margin_mse(list(logits.split(3)), [t for t in teacher])
    assert torch.allclose(ours, reference, atol=1e-5)
    # groups of different sizes: the mean over groups of each group's mean squared margin error
    rows = [torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0, 3.0])]
    assert float(margin_mse(rows, [(0.0, 0.0), (1.0, 0.0, 0.0)])) == pytest.approx((1.0 + (0.0 + 4.0) / 2) / 2)


def _groups(teacher: bool = True) -> list[Group]:
    scores = [(4.0, 0.0, -1.0), (3.0, 1.0, 0.0), (2.0, -2.0, 1.0)]
    return [Group(q, p, [n1, n2], key=(f"q{i}", f"d{i}"), teacher=scores[i] if teacher else None)
            for i, (q, p, n1, n2) in enumerate(zip(QUERY, POS, NEG1, NEG2))]


def _margin_error(model, groups: list[Group]) -> float:  # noqa: ANN001
    model.model.eval()
    with torch.no_grad():
        logits = pair_logits(model, [(g.query, d) for g in groups for d in (g.positive, *g.negatives)], 32)
    return float(margin_mse(list(logits.split(3)), [g.teacher for g in groups]))


def test_distillation_learns_the_teachers_margins(tiny_bert_dir: Path) -> None:
    base = _cross_encoder(tiny_bert_dir)
    cfg = CETrainConfig(epochs=60, lr=5e-3, queries_per_step=3, max_length=32, warmup=0.0)
    plain = train_cross_encoder(copy.deepcopy(base), _groups(teacher=False), cfg)
    assert train_cross_encoder(copy.deepcopy(base), _groups(), cfg) == plain        # scores inert without distill
    student = copy.deepcopy(base)
    before = _margin_error(student, _groups())
    losses = train_cross_encoder(student, _groups(), CETrainConfig(**{**cfg.__dict__, "distill": 1.0}))
    assert np.isfinite(losses).all() and losses[0] == pytest.approx(before, rel=1e-4)  # distill=1: MarginMSE only
    assert _margin_error(student, _groups()) < 0.2 * before
    mixed = train_cross_encoder(copy.deepcopy(base), _groups(), CETrainConfig(**{**cfg.__dict__, "distill": 0.5}))
    assert mixed != plain and mixed != losses
    with pytest.raises(ValueError, match="teacher's scores"):
        train_cross_encoder(copy.deepcopy(base), _groups(teacher=False), CETrainConfig(distill=0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_cross_encoder(copy.deepcopy(base), _groups(), CETrainConfig(distill=1.5))


def test_a_distilled_cross_encoder_has_its_teacher_as_parent_and_is_retrained_exactly(workspace) -> None:  # noqa: ANN001
    ws = workspace
    data = training_data(ws, tiny_dataset(), "train", pool_depth=8)
    small = CETrainConfig(epochs=1, lr=1e-3, queries_per_step=3, max_length=32)
    train_teacher(ws, data, "teacher", "tiny", small, n_negatives=3)
    with pytest.raises(Exception, match="score cache"):
        train_teacher(ws, data, "student", "tiny", CETrainConfig(**{**small.__dict__, "distill": 0.5}), n_negatives=3)
    cache, scores = score_pools(ws, data, "teacher", show_progress=False)
    ref, losses = train_teacher(ws, data, "student", "tiny", CETrainConfig(**{**small.__dict__, "distill": 0.5}),
                                n_negatives=3, cache=str(cache))
    assert losses and ref.manifest["extra"]["train"]["distill"] == 0.5
    parents = {rel: str(p) for rel, p in ws.registry.parents_of(ref)}
    assert parents == {"init": "tiny@v1", "teacher": "teacher@v1", "cache": str(cache)}
    recorded = read_examples(ws, str(ref))   # the groups carry the teacher's scores they were trained on
    assert recorded and all(e.teacher == tuple(scores.scores[e.query_id][d] for d in (e.positive, *e.negatives))
                            for e in recorded)
    rep = forget(ws, ForgetRequest(("d0",)), unlearn="retrain")
    by_model = {m["model"]: m for m in rep.receipt["unlearning"]}
    assert by_model["student@v1"]["level"] == "exact" and by_model["student@v1"]["new"] == "student@v2"
    steps = rep.steps_run
    assert steps.index("model:teacher@v1") < steps.index(f"model:{cache}") < steps.index("model:student@v1")
    new = read_examples(ws, "student@v2")
    assert new and all("d0" not in (e.positive, *e.negatives) for e in new)
    assert by_model[str(cache)]["rescored_by"] == "teacher@v2"   # the student retrained on the new scores
