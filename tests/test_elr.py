"""Early-learning regularisation (lethe.training.elr): the formula, the targets' EMA, its gradient, forgetting
its per-example state, and the ELR option of the contrastive and cross-encoder trainers on tiny models."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lethe.training.elr import EPS, ELRConfig, ELRTargets, as_targets, example_key
from lethe.training.losses import elr_penalty, infonce
from lethe.training.pools import MinedExample
from lethe.training.scorers import BiEncoderScorer, group_scores
from tests.conftest import make_docs

TEXTS = {d.id: d.contents for d in make_docs()}
QUERIES = {"q1": "fox jumping", "q2": "cardano rewards", "q3": "vitamin health", "q4": "dense vectors"}
EXAMPLES = [
    MinedExample("q1", "d0", ("d3", "d7"), (0.0, 0.0, 0.0)),
    MinedExample("q1", "d1", ("d3", "d8"), (0.0, 0.0, 0.0)),
    MinedExample("q2", "d2", ("d4", "d0"), (0.0, 0.0, 0.0)),
    MinedExample("q3", "d5", ("d6", "d0"), (0.0, 0.0, 0.0)),
    MinedExample("q4", "d9", ("d7", "d8"), (0.0, 0.0, 0.0)),
    MinedExample("q2", "d11", ("d10", "d3"), (0.0, 0.0, 0.0)),   # a "noisy" positive
]


def _official(output: torch.Tensor, target: torch.Tensor, beta: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference implementation's regulariser (Liu et al. 2020, ``elr_loss``), minus its CE term:
    returns (new targets, ``lam * ((1 - (t * p).sum(1)).log()).mean()``)."""
    y_pred = torch.clamp(torch.softmax(output, dim=1), 1e-4, 1.0 - 1e-4)
    y_pred_ = y_pred.detach()
    target = beta * target + (1 - beta) * (y_pred_ / y_pred_.sum(dim=1, keepdim=True))
    return target, lam * ((1 - (target * y_pred).sum(dim=1)).log()).mean()


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------- the formula
def test_penalty_is_the_mean_log_of_one_minus_the_agreement() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    t = torch.tensor([[0.3, 0.1, 0.1], [0.2, 0.2, 0.1]])
    hand = (np.log(1 - (0.21 + 0.02 + 0.01)) + np.log(1 - (0.02 + 0.02 + 0.08))) / 2
    assert float(elr_penalty(p, t)) == pytest.approx(hand, rel=1e-6)
    assert float(elr_penalty(p, torch.zeros_like(p))) == 0.0     # no targets yet: no pull


def test_update_and_loss_matches_a_hand_computation_and_the_official_code() -> None:
    cfg = ELRConfig(beta=0.7, lam=3.0)
    elr = ELRTargets(cfg)
    keys = [("q1", "d0"), ("q2", "d2")]
    x1 = np.array([[2.0, 0.5, -1.0], [0.0, 12.0, 1.0]])     # row 2 saturates: the clamp bites
    x2 = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ref_t = torch.zeros(2, 3, dtype=torch.float64)
    t_hand = np.zeros((2, 3))
    for x in (x1, x2):
        reg = elr.update_and_loss(keys, torch.tensor(x, dtype=torch.float32))
        # hand: p clamped, the target's EMA of p renormalised, then lam * mean log(1 - <t, p>)
        p = np.clip(_np_softmax(x), EPS, 1 - EPS)
        t_hand = 0.7 * t_hand + 0.3 * p / p.sum(axis=1, keepdims=True)
        hand = 3.0 * np.mean(np.log(1 - (t_hand * p).sum(axis=1)))
        ref_t, ref = _official(torch.tensor(x), ref_t, 0.7, 3.0)
        assert float(reg) == pytest.approx(hand, rel=1e-5, abs=1e-7)
        assert float(reg) == pytest.approx(float(ref), rel=1e-5, abs=1e-7)
        for i, k in enumerate(keys):
            np.testing.assert_allclose(elr.target(k), t_hand[i], rtol=1e-5, atol=1e-7)
    assert elr.target(keys[1])[1] < 1.0 and len(elr) == 2


def test_targets_follow_the_ema_of_the_predictions() -> None:
    elr = ELRTargets(ELRConfig(beta=0.5, lam=1.0))
    x = torch.tensor([[1.0, 0.0, -1.0]])
    p = np.clip(_np_softmax(x.numpy()), EPS, 1 - EPS)[0]
    p = p / p.sum()
    for n in range(1, 6):
        elr.update_and_loss([("q", "d")], x)
        np.testing.assert_allclose(elr.target(("q", "d")), (1 - 0.5**n) * p, rtol=1e-5)  # t_n = (1 - beta^n) p
    assert elr.target(("q", "other")) is None


def test_gradient_pushes_the_prediction_toward_the_target() -> None:
    elr = ELRTargets(ELRConfig(beta=0.0, lam=1.0))
    key = ("q1", "d0")
    elr.update_and_loss([key], torch.tensor([[0.0, 0.0, 3.0]]))   # the model once favoured candidate 2
    # now the (noisy) label has pulled it to candidate 0; beta=1 would freeze t: use the stored one as is
    elr.config = ELRConfig(beta=0.999999, lam=1.0)
    logits = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
    reg = elr.update_and_loss([key], logits)
    reg.backward()
    assert logits.grad[0, 2] < 0 < logits.grad[0, 0]              # descent raises candidate 2, lowers 0
    moved = torch.softmax(logits.detach() - 0.5 * logits.grad, dim=1)[0]
    before = torch.softmax(logits.detach(), dim=1)[0]
    assert moved[2] > before[2] and moved[0] < before[0]


def test_ragged_groups_are_the_mean_over_groups() -> None:
    rows = [torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.5, 0.2])]
    a, b = ELRTargets(), ELRTargets()
    for _ in range(2):
        ragged = a.update_and_loss([("q1", "d0"), ("q2", "d1")], rows)
        one = b.update_and_loss([("q1", "d0")], rows[0][None])
        two = b.update_and_loss([("q2", "d1")], rows[1][None])
    assert float(ragged) == pytest.approx((float(one) + float(two)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="candidates"):
        a.update_and_loss([("q1", "d0")], torch.zeros(1, 5))      # a group keeps its size
    with pytest.raises(ValueError, match="keys"):
        a.update_and_loss([("q1", "d0")], torch.zeros(2, 3))
    with pytest.raises(ValueError):
        ELRConfig(beta=1.0)
    with pytest.raises(ValueError):
        ELRConfig(lam=-1.0)


def test_forget_drops_the_targets_of_forgotten_pairs() -> None:
    elr = ELRTargets()
    keys = [example_key(e) for e in EXAMPLES]
    elr.update_and_loss(keys, torch.randn(len(keys), 3, generator=torch.Generator().manual_seed(0)))
    assert len(elr) == 6 and ("q1", "d0") in elr
    assert elr.forget([("q1", "d0"), ("q9", "d9")]) == 1
    assert ("q1", "d0") not in elr and elr.target(("q1", "d0")) is None and len(elr) == 5
    assert elr.forget_docs({"d1", "d5"}) == 2 and {("q1", "d1"), ("q3", "d5")}.isdisjoint(elr.keys())
    assert elr.forget_queries({"q2"}) == 2 and elr.keys() == [("q4", "d9")]
    elr.clear()
    assert len(elr) == 0
    assert not hasattr(elr, "save")                                  # in memory only
    assert as_targets(None) is None and as_targets(elr) is elr and isinstance(as_targets(ELRConfig()), ELRTargets)


# ------------------------------------------------------------------------------- the trainers
@pytest.fixture
def bi_scorer(tiny_bert_dir: Path) -> BiEncoderScorer:
    from sentence_transformers import SentenceTransformer

    return BiEncoderScorer(SentenceTransformer(str(tiny_bert_dir), device="cpu"), max_length=32)


def _plain_recipe(scorer: BiEncoderScorer, epochs: float, lr: float, batch_size: int, seed: int = 42) -> list[float]:
    """``train_groups`` as it was before the ELR option (the default path must stay this, bit for bit)."""
    import math
    import random

    from lethe.training.loop import LoopSettings, epoch_batches, run_loop

    batches = epoch_batches(EXAMPLES, batch_size, random.Random(seed))
    settings = LoopSettings(max(1, math.ceil(len(EXAMPLES) * epochs / batch_size)), lr, weight_decay=0.01, seed=seed)
    return run_loop(scorer.module, lambda _: infonce(group_scores(scorer, next(batches), QUERIES, TEXTS),
                                                     scorer.scale), settings).losses


def _weights(scorer: BiEncoderScorer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in scorer.module.parameters()]


def test_train_groups_default_is_unchanged_and_elr_differs(bi_scorer: BiEncoderScorer) -> None:
    from lethe.training.contrastive import train_groups

    kw = dict(epochs=1, lr=5e-3, batch_size=3)
    ref = bi_scorer.copy()
    ref_losses = _plain_recipe(ref, **kw)
    plain = bi_scorer.copy()
    assert train_groups(plain, EXAMPLES, QUERIES, TEXTS, **kw) == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(_weights(plain), _weights(ref)))
    zero = bi_scorer.copy()                                            # lam = 0: the plain recipe again
    assert train_groups(zero, EXAMPLES, QUERIES, TEXTS, elr=ELRConfig(lam=0.0), **kw) == ref_losses
    targets = ELRTargets(ELRConfig(beta=0.7, lam=3.0))
    regularised = bi_scorer.copy()
    losses = train_groups(regularised, EXAMPLES, QUERIES, TEXTS, elr=targets, **kw)
    assert len(losses) == len(ref_losses) and all(np.isfinite(losses))
    assert losses[0] < ref_losses[0]                                   # log(1 - <t, p>) < 0 from the first step
    assert any(not torch.equal(a, b) for a, b in zip(_weights(regularised), _weights(plain)))
    assert sorted(targets.keys()) == sorted(example_key(e) for e in EXAMPLES)
    assert all(abs(targets.target(k).sum() - 0.3) < 1e-5 for k in targets)   # each seen once: (1 - beta) p
    assert targets.forget([("q1", "d0")]) == 1 and len(targets) == 5


def test_train_cross_encoder_with_elr(tiny_bert_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    from lethe.ranking.cross_encoder import CETrainConfig, Group, train_cross_encoder

    base = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    groups = [Group(QUERIES[e.query_id], TEXTS[e.positive], [TEXTS[d] for d in e.negatives][: 1 + i % 2],
                    key=example_key(e)) for i, e in enumerate(EXAMPLES)]     # groups of 2 and 3 candidates
    cfg = CETrainConfig(epochs=1, lr=5e-3, queries_per_step=3, max_length=32, warmup=0.0)
    plain = train_cross_encoder(copy.deepcopy(base), groups, cfg)
    unkeyed = [Group(g.query, g.positive, g.negatives) for g in groups]
    assert train_cross_encoder(copy.deepcopy(base), unkeyed, cfg) == plain           # the key is inert without ELR
    assert train_cross_encoder(copy.deepcopy(base), groups,
                               CETrainConfig(**{**cfg.__dict__, "elr": ELRConfig(lam=0.0)})) == plain
    targets = ELRTargets(ELRConfig(lam=3.0))
    losses = train_cross_encoder(copy.deepcopy(base), groups, CETrainConfig(**{**cfg.__dict__, "elr": targets}))
    assert len(losses) == len(plain) and losses != plain and all(np.isfinite(losses))
    assert len(targets) == len(groups) and targets.target(("q1", "d1")).shape == (3,)
    with pytest.raises(ValueError, match="key"):
        train_cross_encoder(copy.deepcopy(base), unkeyed, CETrainConfig(elr=ELRConfig()))


# ------------------------------------------------------------------------------- targets from the model
def test_prime_starts_targets_at_the_prediction_and_the_ema_runs_from_there() -> None:
    elr = ELRTargets(ELRConfig(beta=0.5, lam=1.0, start="model"))
    x0, x1 = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    elr.prime([("q", "d")], x0)
    p0 = torch.softmax(x0[0], 0).clamp(EPS, 1 - EPS).numpy()
    np.testing.assert_allclose(elr.target(("q", "d")), p0 / p0.sum(), rtol=1e-6)
    elr.update_and_loss([("q", "d")], x1)
    p1 = torch.softmax(x1[0], 0).clamp(EPS, 1 - EPS).numpy()
    np.testing.assert_allclose(elr.target(("q", "d")), 0.5 * p0 / p0.sum() + 0.5 * p1 / p1.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="start"):
        ELRConfig(start="ones")


def test_start_model_primes_every_group_before_the_first_step(bi_scorer: BiEncoderScorer) -> None:
    from lethe.training.contrastive import train_groups

    before = group_scores(bi_scorer, EXAMPLES, QUERIES, TEXTS).detach() * bi_scorer.scale
    primed = ELRTargets(ELRConfig(beta=0.9999, lam=3.0, start="model"))
    zeros = ELRTargets(ELRConfig(beta=0.9999, lam=3.0))
    a, b = bi_scorer.copy(), bi_scorer.copy()
    la = train_groups(a, EXAMPLES, QUERIES, TEXTS, epochs=0.5, lr=5e-3, batch_size=3, elr=primed)
    lb = train_groups(b, EXAMPLES, QUERIES, TEXTS, epochs=0.5, lr=5e-3, batch_size=3, elr=zeros)
    assert len(primed) == len(EXAMPLES) and len(zeros) == 3           # every group primed; zeros: only those seen
    for i, e in enumerate(EXAMPLES):                   # beta ~ 1: each target ~ its pre-training prediction
        p = torch.softmax(before[i], 0).clamp(EPS, 1 - EPS).numpy()
        np.testing.assert_allclose(primed.target(example_key(e)), p / p.sum(), atol=1e-3)
    assert la[0] < lb[0]                                               # a full target pulls from the first step


def test_cross_encoder_start_model_is_recorded(tiny_bert_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    from lethe.ranking.cross_encoder import CETrainConfig, Group, train_cross_encoder

    base = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    groups = [Group(QUERIES[e.query_id], TEXTS[e.positive], [TEXTS[d] for d in e.negatives], key=example_key(e))
              for e in EXAMPLES]
    targets = ELRTargets(ELRConfig(lam=3.0, start="model"))
    cfg = CETrainConfig(epochs=0.5, lr=5e-3, queries_per_step=3, max_length=32, warmup=0.0, elr=targets)
    train_cross_encoder(base, groups, cfg)
    assert len(targets) == len(groups)                                  # all primed, though half were visited
    assert cfg.to_dict()["elr"] == {"beta": 0.7, "lam": 3.0, "start": "model", "select": 0.0}
    assert CETrainConfig.from_dict(cfg.to_dict()).elr == ELRConfig(lam=3.0, start="model")


def test_select_skips_the_labels_the_targets_doubt(bi_scorer: BiEncoderScorer) -> None:
    from lethe.training.contrastive import elr_step

    with pytest.raises(ValueError, match="start='model'"):
        ELRConfig(select=0.1)
    with pytest.raises(ValueError, match="select"):
        ELRConfig(select=1.0, start="model")
    targets = ELRTargets(ELRConfig(lam=0.0, start="model", select=0.2))
    keys = [example_key(e) for e in EXAMPLES[:2]]
    targets.prime(keys, torch.tensor([[-5.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))   # the first label is implausible
    assert targets.kept(keys) == [False, True] and targets.doubted() == [keys[0]]
    assert targets.kept([("new", "key")]) == [True]                              # no target yet: learn it
    # the loss is InfoNCE over the kept groups only (lam 0: no ELR term)
    loss = elr_step(bi_scorer, EXAMPLES[:2], QUERIES, TEXTS, targets)
    s = group_scores(bi_scorer, EXAMPLES[:2], QUERIES, TEXTS)
    assert float(loss) == pytest.approx(float(infonce(s[1:], bi_scorer.scale)), rel=1e-5)
    none_kept = ELRTargets(ELRConfig(lam=0.0, start="model", select=0.99))
    none_kept.prime(keys, torch.zeros(2, 3))
    assert float(elr_step(bi_scorer, EXAMPLES[:2], QUERIES, TEXTS, none_kept)) == 0.0


def test_cross_encoder_select_drops_doubted_groups_from_the_label_loss(tiny_bert_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    from lethe.ranking.cross_encoder import CETrainConfig, Group, group_logits, listwise_loss
    from lethe.training.losses import group_nll

    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    model.model.eval()
    groups = [Group(QUERIES[e.query_id], TEXTS[e.positive], [TEXTS[d] for d in e.negatives], key=example_key(e))
              for e in EXAMPLES[:3]]
    targets = ELRTargets(ELRConfig(lam=0.0, start="model", select=0.5))
    targets.prime([g.key for g in groups], torch.tensor([[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [3.0, 0.0, 0.0]]))
    cfg = CETrainConfig(max_length=32)
    with torch.no_grad():
        loss = listwise_loss(model, groups, cfg, targets)
        kept = [groups[0], groups[2]]
        ref = group_nll(group_logits(model, [(g.query, [g.positive, *g.negatives]) for g in kept], 32), [3, 3])
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
