"""The one training loop (schedule, stopping, time budget, batches) and the shared losses against their formulas."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lethe.training import losses
from lethe.training.loop import LoopSettings, epoch_batches, optimizer, run_loop


def _lrs(s: LoopSettings) -> list[float]:
    module = torch.nn.Linear(2, 1)
    opt, sched = optimizer(module, s)
    out = []
    for _ in range(s.steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules() -> None:
    assert _lrs(LoopSettings(4, 1.0)) == [1.0] * 4  # constant
    assert _lrs(LoopSettings(4, 1.0, warmup=1.0)) == pytest.approx([0.25, 0.5, 0.75, 1.0])  # warm-up over every step
    # warm-up then linear decay (the first step is the one warm-up step when warmup is 0)
    assert _lrs(LoopSettings(5, 1.0, warmup=0.0, decay=True)) == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])
    assert _lrs(LoopSettings(10, 1.0, warmup=0.2, decay=True))[:3] == pytest.approx([0.5, 1.0, 1.0])


def test_grouped_decay_spares_biases() -> None:
    module = torch.nn.Linear(3, 2)
    opt, _ = optimizer(module, LoopSettings(1, 0.1, weight_decay=0.5, grouped_decay=True))
    decays = {tuple(g["params"][0].shape): g["weight_decay"] for g in opt.param_groups}
    assert decays == {(2, 3): 0.5, (2,): 0.0}


def test_loop_learns_stops_and_leaves_eval_mode() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Dropout(0.0))
    x, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [4.0]])
    res = run_loop(module, lambda step: ((module(x) - y) ** 2).mean(), LoopSettings(200, 0.1))
    assert res.steps == 200 and res.losses[-1] < res.losses[0] / 10 and not module.training
    stop = run_loop(module, lambda step: None if step == 3 else ((module(x) - y) ** 2).mean(), LoopSettings(10, 0.1))
    assert stop.steps == 3 and stop.stopped
    seen: list[bool] = []
    settings = LoopSettings(2, 0.1, train_mode=False)
    run_loop(module, lambda step: seen.append(module.training) or module(x).sum(), settings)
    assert seen == [False, False]


def test_loop_takes_an_already_propagated_loss() -> None:
    module = torch.nn.Linear(1, 1)

    def accumulated(step: int) -> float:
        total = 0.0
        for v in (1.0, 2.0):
            loss = (module(torch.tensor([[v]])) ** 2).mean() / 2
            loss.backward()
            total += float(loss.detach())
        return total

    res = run_loop(module, accumulated, LoopSettings(3, 0.01))
    assert res.steps == 3 and all(isinstance(v, float) for v in res.losses)


def test_time_budget_ends_the_run() -> None:
    module = torch.nn.Linear(1, 1)
    res = run_loop(module, lambda step: module(torch.ones(1, 1)).sum(), LoopSettings(1000, 0.01, max_seconds=1e-9))
    assert res.steps == 1


def test_epoch_batches_reshuffle_each_epoch_and_carry_leftovers() -> None:
    items = list(range(5))
    batches = epoch_batches(items, 2, random.Random(0))
    drawn = [next(batches) for _ in range(5)]
    assert all(len(b) == 2 for b in drawn)
    flat = [i for b in drawn for i in b]
    assert sorted(flat[:5]) == items and sorted(flat[5:10]) == items  # two whole epochs
    # the reference: the loops this replaced refilled a list with a shuffled copy when it ran short
    rng, order, ref = random.Random(0), [], []
    for _ in range(5):
        if len(order) < 2:
            more = list(items)
            rng.shuffle(more)
            order += more
        ref.append(order[:2])
        order = order[2:]
    assert drawn == ref
    stable = epoch_batches(items, 5, random.Random(0), order=lambda xs, epoch: sorted(xs, reverse=epoch % 2 == 1))
    assert next(stable) == items and next(stable) == items[::-1]


def test_group_nll_matches_cross_entropy_of_equal_groups_and_pads_unequal_ones() -> None:
    torch.manual_seed(0)
    m = torch.randn(3, 4)
    ce = torch.nn.functional.cross_entropy(m, torch.zeros(3, dtype=torch.long))
    assert torch.isclose(losses.group_nll(m.flatten(), [4, 4, 4]), ce)
    # unequal groups: a group padded with -inf equals the shorter group
    flat = torch.cat([m[0], m[1, :2], m[2, :3]])
    padded = torch.stack([m[0], torch.cat([m[1, :2], torch.full((2,), -float("inf"))]),
                          torch.cat([m[2, :3], torch.full((1,), -float("inf"))])])
    ref = torch.nn.functional.cross_entropy(padded, torch.zeros(3, dtype=torch.long))
    assert torch.isclose(losses.group_nll(flat, [4, 2, 3]), ref)
    target = torch.zeros(3, 4)
    target[:, 0] = 1.0
    bce = torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(m[i], target[i]) for i in range(3)]).mean()
    assert torch.isclose(losses.group_nll(m.flatten(), [4, 4, 4], bce_weight=0.5), ce + 0.5 * bce)


def test_ranknet_and_npo_match_their_formulas() -> None:
    s = torch.tensor([0.3, 1.2, -0.4, 0.9])
    num = den = 0.0
    for a in range(4):
        for b in range(a + 1, 4):
            w = 1.0 / ((a + 1) + (b + 1))
            num += w * math.log1p(math.exp(float(s[b] - s[a])))
            den += w
    assert abs(float(losses.ranknet(s)) - num / den) < 1e-6
    r, beta = torch.tensor([0.5, -1.0, 2.0]), 0.7
    ref = (2 / beta) * sum(math.log1p(math.exp(beta * float(x))) for x in r) / 3
    assert abs(float(losses.npo(r, beta)) - ref) < 1e-6


def test_infonce_is_cross_entropy_of_the_first_column() -> None:
    s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    ref = sum(-math.log(math.exp(20 * row[0]) / sum(math.exp(20 * x) for x in row)) for row in s.tolist()) / 2
    assert abs(float(losses.infonce(s, 20.0)) - ref) < 1e-4
    assert torch.allclose(losses.log_p_target(s, 20.0), torch.log_softmax(20 * s, dim=-1)[:, 0])
