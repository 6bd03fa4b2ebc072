"""Unlearning: forget / retain sets, the methods on tiny models, the verification figures and verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lethe.errors import LetheError
from lethe.training.losses import log_p_target
from lethe.training.pools import MinedExample
from lethe.training.scorers import BiEncoderScorer, CrossEncoderScorer, group_scores, pair_scores
from lethe.unlearning.base import UnlearnConfig, UnlearnTask
from lethe.unlearning.registry import METHODS, get_method
from lethe.unlearning.sets import split_examples, without_docs
from lethe.unlearning.verify import Figures, Thresholds, auc, ks_p, mia_auc, probe_auc, relearn_gap, verdict
from tests.conftest import make_docs

TEXTS = {d.id: d.contents for d in make_docs()}
QUERIES = {"q1": "fox jumping", "q2": "cardano rewards", "q3": "vitamin health", "q4": "dense vectors",
           "q5": "ledger hash"}
EXAMPLES = [
    MinedExample("q1", "d0", ("d3", "d7"), (3.0, 1.0, 0.5)),
    MinedExample("q1", "d1", ("d3", "d8"), (2.5, 1.0, 0.2)),
    MinedExample("q2", "d2", ("d4", "d0"), (3.0, 2.0, 0.1)),   # d0 only as a negative
    MinedExample("q3", "d5", ("d6", "d0"), (3.0, 1.5, 0.3)),   # d0 only as a negative
    MinedExample("q4", "d9", ("d7", "d8"), (3.0, 1.0, 0.9)),
    MinedExample("q5", "d11", ("d10", "d3"), (3.0, 0.4, 0.2)),
]


# ------------------------------------------------------------------------------- sets
def test_split_examples_into_forget_touched_retain() -> None:
    sets = split_examples(EXAMPLES, docs={"d0"}, queries={"q5"}, retain_size=3, neighbours={"d9"})
    assert sets.forget_pairs == [("q1", "d0"), ("q5", "d11")]
    assert [(e.query_id, e.negatives) for e in sets.touched] == [("q2", ("d4", "d4")), ("q3", ("d6", "d6"))]
    assert sets.touched[0].teacher == (3.0, 2.0, 2.0)
    assert sets.retain[:2] == sets.touched and sets.retain[2].positive == "d9"  # touched, then neighbours
    assert len(sets.remaining) == 4 and all("d0" not in (e.positive, *e.negatives) for e in sets.remaining)
    assert without_docs(EXAMPLES[0], {"d3", "d7"}) is None


# ------------------------------------------------------------------------------- verification
def test_auc_ks_and_relearn_gap_on_known_cases() -> None:
    assert auc([2.0, 3.0], [1.0]) == 1.0 and auc([1.0], [2.0, 3.0]) == 0.0
    assert auc([1.0, 1.0], [1.0]) == 0.5 and math.isnan(auc([], [1.0]))
    assert mia_auc([0.9, 0.8, 0.7], [0.1, 0.2, 0.75]) == pytest.approx(8 / 9)
    rng = np.random.default_rng(0)
    same = ks_p(rng.normal(0, 1, 300), rng.normal(0, 1, 300))
    shifted = ks_p(rng.normal(0, 1, 300), rng.normal(1, 1, 300))
    assert same > 0.05 > shifted
    assert relearn_gap([0.5, 0.7], [0.4, 0.4]) == pytest.approx(0.2)


def test_probe_sees_membership_only_where_it_exists() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, (200, 4)), rng.normal(-1, 1, (200, 4))
    remembered, unseen = rng.normal(1, 1, (50, 4)), rng.normal(-1, 1, (50, 4))
    assert probe_auc(members, nonmembers, remembered, unseen) > 0.9
    forgotten = rng.normal(-1, 1, (50, 4))  # looks like never-seen documents
    assert abs(probe_auc(members, nonmembers, forgotten, unseen) - 0.5) < 0.15


def _fig(**kw: float) -> Figures:
    base = dict(method="npo", ks_p=0.3, mia_auc=0.55, mia_auc_oracle=0.52, retain_ndcg10=0.70,
                retain_ndcg10_original=0.705)
    base.update(kw)
    return Figures(**base)


def test_verdict_says_yes_only_when_every_threshold_holds() -> None:
    assert verdict(_fig()).verdict == "unlearned"
    assert verdict(_fig(mia_auc=0.58)).failed == ["mia_gap"]            # gap 0.06 > 0.05
    assert verdict(_fig(ks_p=0.01)).verdict == "not_unlearned"
    assert verdict(_fig(retain_ndcg10=0.69)).failed == ["retain"]       # dropped 0.015 > 0.01
    assert verdict(_fig(ks_p=math.nan)).verdict == "not_unlearned"     # not measured never passes
    assert verdict(_fig(mia_auc=0.45, mia_auc_oracle=0.5)).verdict == "unlearned"  # |gap| counts
    assert verdict(_fig(ks_p=0.04), Thresholds(ks_p=0.01)).verdict == "unlearned"
    assert verdict(_fig(original_passes=True)).verdict == "inconclusive"   # the original passes too
    assert verdict(_fig(ks_p=0.01, original_passes=True)).verdict == "not_unlearned"


def test_exact_only_for_retrain_and_sharded_with_proof() -> None:
    assert verdict(_fig(method="retrain", exact=True, ks_p=0.0)).verdict == "exact"
    assert verdict(_fig(method="sharded", exact=True)).verdict == "exact"
    assert verdict(_fig(method="retrain", exact=False)).verdict == "unlearned"
    assert verdict(_fig(method="grad_ascent", exact=True)).verdict == "unlearned"   # an approximate method
    assert verdict(_fig(method="grad_ascent", exact=True, ks_p=0.0)).verdict == "not_unlearned"
    d = verdict(_fig(probe_auc=math.nan)).to_dict()
    assert d["probe_auc"] is None and d["verdict"] == "unlearned"


# ------------------------------------------------------------------------------- methods on tiny models
@pytest.fixture
def bi_scorer(tiny_bert_dir: Path) -> BiEncoderScorer:
    from sentence_transformers import SentenceTransformer

    return BiEncoderScorer(SentenceTransformer(str(tiny_bert_dir), device="cpu"), max_length=32)


@pytest.fixture
def ce_scorer(tiny_bert_dir: Path) -> CrossEncoderScorer:
    from sentence_transformers import CrossEncoder

    from lethe.ranking.cross_encoder import CETrainConfig, Group, train_cross_encoder

    ce = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    # a fresh head scores every pair alike: train it on the groups first, so there is something to forget
    groups = [Group(QUERIES[e.query_id], TEXTS[e.positive], [TEXTS[d] for d in e.negatives]) for e in EXAMPLES]
    train_cross_encoder(ce, groups, CETrainConfig(epochs=10, lr=5e-3, queries_per_step=6, max_length=32, warmup=0.0))
    return CrossEncoderScorer(ce, max_length=32)


def _task(scorer, sets, **kw) -> UnlearnTask:  # noqa: ANN001
    return UnlearnTask(scorer.copy(), sets, QUERIES, TEXTS, reference=scorer, **kw)


def _log_p(scorer, sets) -> float:  # noqa: ANN001
    import torch

    with torch.no_grad():
        return float(log_p_target(group_scores(scorer, sets.forget, QUERIES, TEXTS), scorer.scale).mean())


@pytest.mark.parametrize("kind", ["bi", "ce"])
@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff", "npo", "pdu", "reglu"])
def test_approximate_methods_lower_the_forget_probability(name: str, kind: str, bi_scorer, ce_scorer) -> None:  # noqa: ANN001
    scorer = bi_scorer if kind == "bi" else ce_scorer
    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    task = _task(scorer, sets)
    before = _log_p(task.scorer, sets)
    lr = 2e-2 if name == "reglu" else 5e-3  # a rank-8 adapter needs a larger step than full fine-tuning
    cfg = UnlearnConfig(steps=8, lr=lr, forget_batch=2, retain_batch=4, pdu_lambda0=0.0, pdu_eta=0.0)
    result = get_method(name).run(task, cfg)
    assert result.method == name and not result.exact and len(result.losses) == 8
    if name == "pdu":  # margin flattening: the forget groups' scores move toward equal
        import torch

        with torch.no_grad():
            s0 = group_scores(scorer, sets.forget, QUERIES, TEXTS)
            s1 = group_scores(result.scorer, sets.forget, QUERIES, TEXTS)
        assert float((s1.max(-1).values - s1.mean(-1)).mean()) < float((s0.max(-1).values - s0.mean(-1)).mean())
        assert result.info["lambdas"] == [0.0] * 8 and result.info["epsilon"] > 0
    else:
        assert _log_p(result.scorer, sets) < before
    # the reference (original) is untouched
    assert _log_p(scorer, sets) == pytest.approx(before, abs=1e-5)


def test_reglu_init_keeps_the_function_and_merges_back(bi_scorer) -> None:  # noqa: ANN001
    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    task = _task(bi_scorer, sets)
    before = pair_scores(bi_scorer, sets.forget_pairs + [("q4", "d9")], QUERIES, TEXTS)
    result = get_method("reglu").run(task, UnlearnConfig(steps=0))
    after = pair_scores(result.scorer, sets.forget_pairs + [("q4", "d9")], QUERIES, TEXTS)
    np.testing.assert_allclose(after, before, atol=1e-5)  # RILA's compensation: same function at step 0
    names = [n for n, _ in result.scorer.module.named_parameters()]
    assert names == [n for n, _ in bi_scorer.module.named_parameters()]  # adapter merged away
    assert result.info["layers"] == 6  # query, key, value of the two layers


def test_pdu_dual_ascent_follows_the_retain_constraint(bi_scorer) -> None:  # noqa: ANN001
    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    cfg = UnlearnConfig(steps=6, lr=5e-3, forget_batch=2, retain_batch=4, pdu_lambda0=0.5, pdu_eta=2.0, pdu_tol=0.0)
    info = get_method("pdu").run(_task(bi_scorer, sets), cfg).info
    lam, eps = 0.5, info["epsilon"]
    for got, r in zip(info["lambdas"], info["retain_losses"]):
        lam = max(0.0, lam + 2.0 * (r - eps))
        assert got == pytest.approx(lam)


def test_relabel_pulls_forget_pairs_to_the_unseen_score(bi_scorer) -> None:  # noqa: ANN001
    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    target = -0.2
    task = _task(bi_scorer, sets, unseen_target=target)
    before = pair_scores(bi_scorer, sets.forget_pairs, QUERIES, TEXTS)
    result = get_method("relabel").run(task, UnlearnConfig(steps=10, lr=5e-3, forget_batch=2, retain_batch=4))
    after = pair_scores(result.scorer, sets.forget_pairs, QUERIES, TEXTS)
    assert abs(after - target).mean() < abs(before - target).mean()
    with pytest.raises(LetheError, match="m_unseen"):
        get_method("relabel").run(_task(bi_scorer, sets))
    with pytest.raises(LetheError, match="original model"):
        get_method("relabel").run(UnlearnTask(bi_scorer.copy(), sets, QUERIES, TEXTS, unseen_target=target))


class TableScorer:
    """A scorer reading ``s(q, d)`` from a table (query text, doc text) -> score."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        import torch

        self.table, self.module, self.scale = table, torch.nn.Linear(1, 1), 1.0

    def scores(self, queries, cands):  # noqa: ANN001, ANN201
        import torch

        return torch.tensor([[self.table[(q, d)] for d in row] for q, row in zip(queries, cands)])


def test_calibrated_targets_are_the_base_score_plus_the_gain_on_unseen_pairs() -> None:
    from lethe.unlearning.methods import calibrated_targets

    pairs, unseen = [("q1", "d0"), ("q5", "d11")], [("q2", "d2"), ("q3", "d5")]
    key = lambda p: (QUERIES[p[0]], TEXTS[p[1]])  # noqa: E731
    base = TableScorer({key(("q1", "d0")): 0.6, key(("q5", "d11")): 0.2, key(("q2", "d2")): 0.3,
                        key(("q3", "d5")): 0.5})
    original = TableScorer({key(("q1", "d0")): 0.9, key(("q5", "d11")): 0.8, key(("q2", "d2")): 0.4,
                            key(("q3", "d5")): 0.6})  # training gave unseen pairs +0.1, members much more
    targets, gain = calibrated_targets(base, original, pairs, unseen, QUERIES, TEXTS)
    assert gain == pytest.approx(0.1)
    assert targets[("q1", "d0")] == pytest.approx(0.7) and targets[("q5", "d11")] == pytest.approx(0.3)
    with pytest.raises(LetheError, match="gain"):
        calibrated_targets(base, original, pairs, [], QUERIES, TEXTS)


def test_relabel_pulls_each_forget_pair_to_its_own_target(bi_scorer) -> None:  # noqa: ANN001
    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    targets = {("q1", "d0"): -0.3}
    before = pair_scores(bi_scorer, sets.forget_pairs, QUERIES, TEXTS)
    task = _task(bi_scorer, sets, pair_targets=targets)
    result = get_method("relabel").run(task, UnlearnConfig(steps=10, lr=5e-3, forget_batch=2, retain_batch=4))
    after = pair_scores(result.scorer, sets.forget_pairs, QUERIES, TEXTS)
    assert abs(after[0] - (-0.3)) < abs(before[0] - (-0.3))
    gaps = result.info["target_gaps"]
    assert gaps[0] > 0 and len(result.losses) == len(gaps) - result.info["stopped_at_target"]
    assert not result.info["stopped_at_target"] or gaps[-1] <= 0  # it stopped because it got there
    # targets above the current scores: already there, so no step is taken and nothing changes
    high = {("q1", "d0"): float(before[0]) + 0.5}
    done = get_method("relabel").run(_task(bi_scorer, sets, pair_targets=high), UnlearnConfig(steps=10, lr=5e-3))
    assert done.info["stopped_at_target"] and done.losses == [] and done.info["target_gaps"][0] < 0
    np.testing.assert_allclose(pair_scores(done.scorer, sets.forget_pairs, QUERIES, TEXTS), before, atol=1e-6)
    with pytest.raises(LetheError, match="no target for the forget pair"):
        get_method("relabel").run(_task(bi_scorer, sets, pair_targets={("q9", "d0"): 0.0}))


def test_retrain_uses_the_recipe_on_the_remaining_data(bi_scorer) -> None:  # noqa: ANN001
    sets = split_examples(EXAMPLES, docs={"d0"})
    seen: list[list[MinedExample]] = []

    def recipe(examples: list[MinedExample]) -> BiEncoderScorer:
        seen.append(examples)
        return bi_scorer.copy()

    result = get_method("retrain").run(_task(bi_scorer, sets, retrain=recipe))
    assert result.exact and seen[0] == sets.remaining
    with pytest.raises(LetheError, match="recipe"):
        get_method("retrain").run(_task(bi_scorer, sets))


def test_method_registry_and_errors(bi_scorer) -> None:  # noqa: ANN001
    with pytest.raises(LetheError, match="unknown unlearning method"):
        get_method("forget-harder")
    assert {"retrain", "sharded", "grad_ascent", "grad_diff", "npo", "pdu", "relabel", "reglu"} <= set(METHODS)
    nothing = split_examples(EXAMPLES, docs={"nope"})
    with pytest.raises(LetheError, match="nothing to forget"):
        get_method("grad_ascent").run(_task(bi_scorer, nothing))


# ------------------------------------------------------------------------------- sharded (SISA)
def test_shards_partition_documents_by_owner() -> None:
    from lethe.unlearning.sharded import assign_shards, shard_of

    owners = {d.id: d.owners for d in make_docs()}
    shards = assign_shards(EXAMPLES, 3, owners)
    assert sum(len(v) for v in shards.values()) <= len(EXAMPLES)
    for s, rows in shards.items():
        for e in rows:  # every document a shard sees belongs to it
            assert all(shard_of(owners[d][0], 3) == s for d in (e.positive, *e.negatives))
    assert shard_of("u1", 8) == shard_of("u1", 8) and 0 <= shard_of("x", 8) < 8


def test_a_group_shared_by_two_owners_goes_with_the_heavier_one() -> None:
    from lethe.unlearning.sharded import assign_shards, group_keys, shard_of

    # u1 asks q1-q3 (answered by a, b, c) and answers v's q4; c also answers q5 and q6 of w
    rows = [("q1", "da"), ("q2", "db"), ("q3", "dc"), ("q4", "du1"), ("q5", "dc2"), ("q6", "dc3")]
    ex = [MinedExample(q, d, ("dx",), (1.0, 0.0)) for q, d in rows]
    owners = {"da": ("a",), "db": ("b",), "dc": ("c",), "du1": ("u1",), "dc2": ("c",), "dc3": ("c",), "dx": ("x",)}
    query_owners = {"q1": ("u1",), "q2": ("u1",), "q3": ("u1",), "q4": ("v",), "q5": ("w",), "q6": ("w",)}
    # weights: u1 4, c 3, w 2, a/b/v 1: u1's questions stay with u1 except c's answer (c weighs 3 < 4)
    assert group_keys(ex, owners, query_owners) == ["u1", "u1", "u1", "u1", "c", "c"]
    assert group_keys(ex, owners) == ["a", "b", "c", "u1", "c", "c"]  # no query owners: the answerer
    assert group_keys([MinedExample("q", "d9", ("dx",), (1.0, 0.0))]) == ["d9"]  # no owners: the doc
    k = 64
    shards = assign_shards(ex, k, owners, query_owners)
    homes = {e.query_id: s for s, es in shards.items() for e in es}
    assert homes["q1"] == homes["q2"] == homes["q3"] == homes["q4"] == shard_of("u1", k)
    assert homes["q5"] == homes["q6"] == shard_of("c", k)
    doc_home = {e.positive: homes[e.query_id] for es in shards.values() for e in es} | {"dx": shard_of("x", k)}
    for s, es in shards.items():  # every negative a shard sees lives in that shard
        assert all(doc_home[n] == s for e in es for n in e.negatives)
    assert sum(len(es) for es in shards.values()) == len(ex)


def test_refill_replaces_foreign_negatives_with_own_documents() -> None:
    from lethe.unlearning.sharded import assign_shards, refill

    e = EXAMPLES[0]  # q1: d0 > (d3, d7)
    row = refill(e, {"d3"}, ["d0", "d3", "d7", "d20", "d21"])
    assert row.positive == "d0" and len(row.negatives) == 2 and "d3" not in row.negatives
    assert "d7" in row.negatives and set(row.negatives) <= {"d7", "d20", "d21"}
    assert row.teacher == (3.0, *(0.5 if d == "d7" else min(e.teacher) for d in row.negatives))
    assert refill(e, {"d3"}, ["d0", "d3", "d7", "d20", "d21"]) == row  # seeded by the group
    assert refill(e, {"d3"}, []).negatives == ("d7", "d7")  # nothing to draw: repeat what is left
    assert refill(e, {"d3", "d7"}, []) is None
    assert refill(e, {"zz"}, []) is e
    # with enough documents per shard no group is lost and every group keeps its size
    many = [MinedExample(f"q{i}", f"p{i}", (f"n{i}a", f"n{i}b", f"n{i}c"), (1.0, 0.5, 0.4, 0.3)) for i in range(40)]
    shards = assign_shards(many, 4)
    assert sum(len(v) for v in shards.values()) == len(many)
    assert all(len(e.negatives) == 3 for rows in shards.values() for e in rows)


def test_sharded_forgets_exactly_by_retraining_only_affected_shards(bi_scorer) -> None:  # noqa: ANN001
    import torch

    from lethe.training.contrastive import train_groups
    from lethe.unlearning.sharded import ShardedModel

    def recipe(scorer, examples):  # noqa: ANN001, ANN202
        train_groups(scorer, examples, QUERIES, TEXTS, epochs=2, lr=5e-3, batch_size=2)

    many = [MinedExample(f"q{i % 5 + 1}", d, (n,), (1.0, 0.0)) for i, (d, n) in
            enumerate([(f"d{i}", f"d{(i * 5 + 3) % 12}") for i in range(12)])]
    model = ShardedModel(bi_scorer, recipe, k=4, lora_r=2, lora_alpha=4)
    model.fit(many)
    trained = {s for s, sh in model.shards.items() if sh.delta}
    assert trained and all(".lora" not in n for sh in model.shards.values() for n in sh.delta)
    combined = model.combined()
    names = dict(combined.module.named_parameters())
    assert any(not torch.equal(names[n], dict(bi_scorer.module.named_parameters())[n])
               for sh in model.shards.values() for n in sh.delta)
    target = many[0].positive
    before = {s: dict(sh.delta) for s, sh in model.shards.items()}
    hit = model.affected([target])
    sets = split_examples(many, docs={target})
    result = get_method("sharded").run(UnlearnTask(bi_scorer.copy(), sets, QUERIES, TEXTS, sharded=model))
    assert result.exact and result.info["shards_retrained"] == hit and len(hit) < 4
    for s, sh in model.shards.items():
        assert target not in sh.seen_docs
        if s not in hit:  # untouched shards keep their exact weights
            assert all(torch.equal(before[s][n], sh.delta[n]) for n in before[s])


def test_full_weight_shards_merge_to_the_base_plus_the_mean_delta(bi_scorer) -> None:  # noqa: ANN001
    import torch

    from lethe.training.contrastive import train_groups
    from lethe.unlearning.sharded import ShardedModel

    def recipe(scorer, examples):  # noqa: ANN001, ANN202
        train_groups(scorer, examples, QUERIES, TEXTS, epochs=1, lr=5e-3, batch_size=2)

    many = [MinedExample(f"q{i % 5 + 1}", f"d{i}", (f"d{(i * 5 + 3) % 12}",), (1.0, 0.0)) for i in range(12)]
    model = ShardedModel(bi_scorer, recipe, k=3, lora_r=0)
    model.fit(many)
    deltas = [sh.delta for sh in model.shards.values() if sh.delta]
    assert len(deltas) >= 2
    # every weight trains, not only the attention projections a LoRA adapter would reach
    assert any("intermediate" in n or "output.dense" in n for d in deltas for n in d)
    base = dict(bi_scorer.module.named_parameters())
    merged = dict(model.combined().module.named_parameters())
    name = next(iter(deltas[0]))
    expected = base[name] + sum(sh.delta.get(name, torch.zeros_like(base[name]))
                                for sh in model.shards.values()) / len(model.shards)
    assert torch.allclose(merged[name], expected, atol=1e-6)
    target = many[0].positive
    hit, _ = model.forget([target])
    assert hit and model.proves_forgotten([target])


def test_sliced_shards_restart_from_the_checkpoint_before_the_slice(bi_scorer) -> None:  # noqa: ANN001
    import torch

    from lethe.training.contrastive import train_groups
    from lethe.unlearning.sharded import ShardedModel

    def recipe(scorer, examples):  # noqa: ANN001, ANN202
        train_groups(scorer, examples, QUERIES, TEXTS, epochs=1, lr=5e-3, batch_size=2, stable_order=True)

    many = [MinedExample(f"q{i % 5 + 1}", f"d{i}", (f"d{(i * 5 + 3) % 12}",), (1.0, 0.0)) for i in range(12)]
    owners = {f"d{i}": (f"u{i % 6}",) for i in range(12)}
    model = ShardedModel(bi_scorer, recipe, k=1, slices=3, lora_r=0)
    model.fit(many, owners)
    shard = model.shards[0]
    assert len(shard.slices) == len(shard.checkpoints) == 3
    assert sorted(e.positive for e in shard.examples) == sorted(e.positive for e in many)
    for rows in shard.slices:  # one owner's groups sit in one slice
        assert all(owners[e.positive][0] not in {owners[x.positive][0] for x in other}
                   for other in shard.slices if other is not rows for e in rows)
    # the document whose first appearance is latest: forgetting it keeps the checkpoints before it
    target = max((e.positive for e in many), key=lambda d: shard.first_slice_holding({d}, set()))
    first = shard.first_slice_holding({target}, set())
    assert first >= 1
    before = [dict(c) for c in shard.checkpoints]
    model.forget([target])
    assert model.proves_forgotten([target]) and len(shard.checkpoints) == 3
    for i in range(first):  # trained on slices that never held the document: kept bit for bit
        assert all(torch.equal(before[i][n], shard.checkpoints[i][n]) for n in before[i])
    assert shard.stages_trained == sum(1 for rows in shard.slices[first:] if rows)
    assert any(not torch.equal(before[-1][n], shard.delta[n]) for n in before[-1])
    with pytest.raises(LetheError, match="slices"):
        ShardedModel(bi_scorer, recipe, slices=0)


# ------------------------------------------------------------------------------- ULD and FIT
@pytest.mark.parametrize("kind", ["bi", "ce"])
def test_uld_suppresses_through_an_assistant_and_leaves_the_target(kind: str, bi_scorer, ce_scorer) -> None:  # noqa: ANN001
    import torch

    from lethe.unlearning.uld import ULD, ULDConfig, ULDScorer

    scorer = bi_scorer if kind == "bi" else ce_scorer
    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    task = _task(scorer, sets)
    weights = {n: p.detach().clone() for n, p in task.scorer.module.named_parameters()}
    result = ULD(ULDConfig(layers=1, alpha=1.0, retain_weight=1.0, lora_r=2, lora_alpha=4)).run(
        task, UnlearnConfig(steps=10, lr=2e-2, forget_batch=2, retain_batch=4))
    served = result.scorer
    assert isinstance(served, ULDScorer) and result.info["output_only"]
    assert all(torch.equal(weights[n], p) for n, p in served.target.module.named_parameters())
    assert _log_p(served, sets) < _log_p(served.target, sets)  # the assistant remembered d0: subtracted
    assert len(list(served.assistant.module.parameters())) < len(list(served.target.module.parameters()))
    fig = verdict(_fig(method="uld", output_only=True))
    assert fig.verdict == "suppressed"  # never "unlearned": the weights still hold the data
    if kind == "bi":
        assert served.embed_docs(["a doc"]).shape[1] == 2 * served.target.embed_docs(["a doc"]).shape[1]


def test_fit_handles_a_stream_with_filtering_importance_and_layers(bi_scorer) -> None:  # noqa: ANN001
    from lethe.unlearning.fit import FIT, FITConfig, layer_attribution

    method = FIT(FITConfig(tau=0.999, epsilon=1e9, top_layers=1))
    cfg = UnlearnConfig(steps=6, lr=5e-3, forget_batch=2, retain_batch=4)
    first = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    task = _task(bi_scorer, first)
    assert len(layer_attribution(task, first.forget)) == 2
    before = _log_p(task.scorer, first)
    r1 = method.run(task, cfg)
    assert r1.info["loss"] in ("npo+retain", "npo", "random_label") and len(r1.info["layers"]) == 1
    assert _log_p(r1.scorer, first) < before and len(method.state.memory) == 1
    # the same document asked again: a near-duplicate of memory whose removal changes little -> filtered
    again = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    r2 = method.run(UnlearnTask(r1.scorer, again, QUERIES, TEXTS, reference=bi_scorer), cfg)
    assert r2.info["filtered_out"] == 1 and r2.losses == [] and len(method.state.history) == 2
    assert all(p.requires_grad for p in r1.scorer.module.parameters())  # layers unfrozen afterwards


def test_epoch_order_is_a_deletion_stable_shuffle() -> None:
    from lethe.training.contrastive import epoch_order

    many = [MinedExample(f"q{i}", f"d{i}", ("n",), (1.0, 0.0)) for i in range(30)]
    first = epoch_order(many, 42, 0)
    assert sorted(first, key=many.index) == many and first != many  # a permutation, not the identity
    assert epoch_order(many, 42, 0) == first and epoch_order(many, 42, 1) != first and epoch_order(many, 7, 0) != first
    gone = many[11]
    assert epoch_order([e for e in many if e is not gone], 42, 0) == [e for e in first if e is not gone]


# ------------------------------------------------------------------------------- OFMU, LAF
def test_ofmu_surgery_removes_only_a_conflicting_component() -> None:
    import torch

    from lethe.unlearning.ofmu import surgery

    g_r = [torch.tensor([1.0, 0.0])]
    out, hit = surgery([torch.tensor([2.0, 3.0])], g_r)  # conflicts: its g_r component goes
    assert hit and torch.allclose(out[0], torch.tensor([0.0, 3.0]))
    out, hit = surgery([torch.tensor([-2.0, 3.0])], g_r)  # ascent there lowers the retain loss: kept
    assert not hit and torch.allclose(out[0], torch.tensor([-2.0, 3.0]))


@pytest.mark.parametrize("kind", ["bi", "ce"])
def test_ofmu_forgets_and_its_penalty_grows(kind: str, bi_scorer, ce_scorer) -> None:  # noqa: ANN001
    scorer = bi_scorer if kind == "bi" else ce_scorer
    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    task = _task(scorer, sets)
    before = _log_p(task.scorer, sets)
    cfg = UnlearnConfig(steps=3, lr=5e-3, forget_batch=2, retain_batch=4, ofmu_inner=2, ofmu_rho0=0.1, ofmu_gamma=2.0)
    result = get_method("ofmu").run(task, cfg)
    assert _log_p(result.scorer, sets) < before
    assert len(result.losses) == 3 and result.info["inner_steps"] == 6
    assert result.info["rho_final"] == pytest.approx(0.1 * 2.0**3)
    assert _log_p(scorer, sets) == pytest.approx(before, abs=1e-5)  # the reference is untouched


def test_ofmu_outer_step_is_the_gradient_of_retain_plus_the_penalty(bi_scorer) -> None:  # noqa: ANN001
    """The double-backprop outer gradient equals a finite-difference check of L_r + rho ||grad L_f||^2."""
    import torch

    from lethe.unlearning.base import retain_loss
    from lethe.unlearning.ofmu import OFMU, flat_grads

    sets = split_examples(EXAMPLES, docs={"d0"}, retain_size=4)
    task = _task(bi_scorer, sets)
    task.scorer.module.eval()
    params = [p for p in task.scorer.module.parameters() if p.requires_grad]
    fb, rb, rho = sets.forget, sets.retain, 0.5

    def objective() -> float:
        g = flat_grads(OFMU._forget_loss(task, fb), params)
        return float(retain_loss(task, rb).detach()) + rho * sum(float((x * x).sum()) for x in g)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        g_f = flat_grads(OFMU._forget_loss(task, fb), params, create_graph=True)
        grads = flat_grads(retain_loss(task, rb) + rho * sum((g * g).sum() for g in g_f), params)
    direction = [torch.randn_like(p) for p in params]
    norm = sum(float((d * d).sum()) for d in direction) ** 0.5
    direction = [d / norm for d in direction]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    eps = 1e-3
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
    up = objective()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
    down = objective()
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=0.05, abs=1e-4)


def test_laf_moves_forgotten_documents_without_any_label(bi_scorer, ce_scorer) -> None:  # noqa: ANN001
    from lethe.unlearning.laf import LAF, LAFConfig, alignment_loss, extractor_loss
    from lethe.unlearning.sets import UnlearnSets

    sets = UnlearnSets([], [], [], [], docs={"d0", "d1"})  # no groups, no queries: documents only
    task = _task(bi_scorer, sets)
    before = bi_scorer.embed_docs([TEXTS[d] for d in sorted(TEXTS)])
    result = LAF(LAFConfig(vae_steps=50, retain_docs=8)).run(task, UnlearnConfig(steps=6, lr=5e-3, forget_batch=2,
                                                                                retain_batch=4))
    after = result.scorer.embed_docs([TEXTS[d] for d in sorted(TEXTS)])
    moved = {d: 1 - float(a @ b) for d, a, b in zip(sorted(TEXTS), before, after)}
    gone = np.mean([moved["d0"], moved["d1"]])
    kept = np.mean([v for d, v in moved.items() if d not in ("d0", "d1")])
    assert gone > 2 * kept and result.info["labels_used"] is False and len(result.losses) == 6
    with pytest.raises(LetheError, match="document tower"):
        LAF().run(_task(ce_scorer, sets))
    with pytest.raises(LetheError, match="nothing to forget"):
        LAF().run(_task(bi_scorer, UnlearnSets([], [], [], [], docs={"nope"})))
    import torch

    m = torch.tensor([0.0, 1.0])
    assert float(extractor_loss(m, m)) == pytest.approx(0.0)
    e = torch.eye(2)
    # aligned retain rows cost nothing; pushing forget rows away (larger c_u) lowers the loss
    assert float(alignment_loss(e, e, e, -e, 1.0)) < float(alignment_loss(e, e, e, e, 1.0))


# ------------------------------------------------------------------------------- label unlearning (mixup)
def test_a_forgotten_label_drops_its_group_and_keeps_the_document() -> None:
    sets = split_examples(EXAMPLES, docs=(), labels={("q1", "d0")}, retain_size=10)
    assert sets.forget_pairs == [("q1", "d0")] and sets.labels == {("q1", "d0")} and not sets.docs
    assert not sets.touched and len(sets.remaining) == 5  # d0 stays a negative of q2 and q3
    assert sum("d0" in e.negatives for e in sets.remaining) == 2


def test_pairwise_and_beta_mixup() -> None:
    import torch

    from lethe.unlearning.mixup import beta_mix, pairwise_mix

    u, v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.zeros(3, 2, 2)
    mu, mv = pairwise_mix(u, v, (0.25, 0.5), limit=100)
    assert mu.shape == (6, 2) and mv.shape == (6, 2, 2)  # 3 pairs x 2 lambdas
    assert torch.allclose(mu[0], torch.tensor([0.25, 0.75])) and torch.allclose(mu[1], torch.tensor([0.5, 0.5]))
    assert len(pairwise_mix(u[:1], v[:1], (0.5,), 100)[0]) == 0 and len(pairwise_mix(u, v, (0.5,), 2)[0]) == 2
    xu, _ = beta_mix(u, v, torch.Generator().manual_seed(0))
    assert xu.shape == u.shape and bool((xu.sum(-1) >= 0).all())  # convex combinations of the rows


def test_label_mixup_forgets_the_judgement(bi_scorer, ce_scorer) -> None:  # noqa: ANN001
    labels = {("q1", "d0"), ("q1", "d1"), ("q4", "d9")}
    sets = split_examples(EXAMPLES, docs=(), labels=labels, retain_size=4)
    task = _task(bi_scorer, sets)
    before = _log_p(task.scorer, sets)
    result = get_method("label_mixup").run(task, UnlearnConfig(steps=6, lr=5e-3, forget_batch=3, retain_batch=3))
    assert _log_p(result.scorer, sets) < before and result.info["mixed_forget_groups"] == 6 * 9
    with pytest.raises(LetheError, match="separate towers"):
        get_method("label_mixup").run(_task(ce_scorer, sets))


# ------------------------------------------------------------------------------- SAE-guided
def test_sae_steers_forgotten_codes_toward_unseen_documents(bi_scorer, ce_scorer) -> None:  # noqa: ANN001
    import torch

    from lethe.unlearning.sae import SAEConfig, SAEGuided, fit_sae, steering_loss, tied_features

    emb = torch.randn(64, 8)
    sae = fit_sae(emb, SAEConfig(sae_steps=200, l1=1e-4))
    rec, z = sae(emb)
    assert float(((rec - emb) ** 2).sum(-1).mean()) < float((emb**2).sum(-1).mean()) / 2 and bool((z >= 0).all())
    zf, zu = torch.tensor([[3.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    assert tied_features(zf, zu, 1).tolist() == [0]
    mu_u, mu_s = torch.zeros(2), torch.ones(2)
    at_unseen = steering_loss(mu_u[None], mu_u, mu_s, 0.5, 1.0)
    at_seen = steering_loss(mu_s[None], mu_u, mu_s, 0.5, 1.0)
    assert float(at_unseen) < float(at_seen)
    sets = split_examples(EXAMPLES[:2] + EXAMPLES[4:], docs={"d0"}, retain_size=4)  # d2, d5, d6 ... never trained on
    result = SAEGuided(SAEConfig(sae_steps=100, top_features=8)).run(
        _task(bi_scorer, sets), UnlearnConfig(steps=5, lr=5e-3, forget_batch=1, retain_batch=4))
    assert result.info["dist_unseen_after"] < result.info["dist_unseen_before"] and len(result.losses) == 5
    with pytest.raises(LetheError, match="document tower"):
        SAEGuided().run(_task(ce_scorer, sets))
