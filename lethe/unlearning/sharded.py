"""SISA exact unlearning (METHODS card B4): K shards, each fed in checkpointed slices, merged into one model.

Groups are split into ``K`` shards by a hash of an owner, so one user's deletion touches as few shards
as possible: the positive's owner (its id when it has none), or, when the query has an owner too, the
one of the two involved in more groups (:func:`group_keys`). A document lives in the shard of the
groups it is the positive of; a negative that lives in another shard is replaced by one of this
shard's own documents (seeded per group), so no group is lost and a document is seen by one shard.
(Cutting foreign negatives instead dropped about two thirds of the groups of a collection without
owners, where 7 of 8 negatives are foreign on average, and the sharded model fell 0.02 nDCG@10 behind
the unsharded.) Within a shard the groups are split into ``slices`` by the same owner hash and trained
slice after slice, checkpointing the shard's weight delta after each.
Each slice trains a LoRA adapter on the weights so far (``lora_r=0``: every weight); the served model
is ``W0 + c * sum_k dW_k`` (``c = 1/K``: the average; ``c = 1``: the sum), one model at serving time.
On SciFact (K=8, ~43 groups and 6 steps a shard) merged LoRA shards stayed 0.013-0.03 nDCG@10 below
the fully fine-tuned unsharded model whatever the rate, rank or targets; averaged full-weight deltas
at 5 x the unsharded rate came within 0.005 of it, and above it after forgetting (benchmarks/RESULTS.md).
Forgetting retrains only the shards whose data held a forgotten document or query, each from the
checkpoint before the first slice that held it (from ``W0`` for the first slice), then recombines: no
component of the result has seen the data, and each shard's ``seen`` set proves it.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lethe.errors import LetheError
from lethe.training.pools import MinedExample, load_examples, save_examples
from lethe.training.scorers import Scorer
from lethe.unlearning.sets import without_docs

#: trains a scorer in place on groups (the model's own recipe; any LoRA adapter is attached by the caller)
ShardRecipe = Callable[[Scorer, list[MinedExample]], None]


def shard_of(key: str, k: int) -> int:
    """Stable shard of an owner / doc id (sha256, not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % k


def group_keys(examples: Sequence[MinedExample], owners: Mapping[str, Sequence[str]] | None = None,
               query_owners: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The owner that places each group: its positive's owner (the doc id when it has none) or, when
    the query has an owner too, whichever of the two is involved in more groups (ties: the larger id).

    A group holds the data of both owners, so a request from either retrains the shard that holds it.
    Placing it with the heavier contributor gathers a prolific user's groups in one shard: on the
    cardano benchmark a user who answered 19 questions and asked 7 (answered by 7 others) touched 5
    shards when every group followed its answerer, 2 this way.
    """
    owners, query_owners = owners or {}, query_owners or {}

    def first(m: Mapping[str, Sequence[str]], key: str) -> str | None:
        return next(iter(m.get(key, ())), None)

    pairs = [(first(query_owners, e.query_id), first(owners, e.positive) or e.positive) for e in examples]
    weight: dict[str, int] = {}
    for asker, answerer in pairs:
        for o in {asker, answerer} - {None}:
            weight[o] = weight.get(o, 0) + 1
    return [answerer if asker is None else max((asker, answerer), key=lambda o: (weight[o], o))
            for asker, answerer in pairs]


def assign_shards(examples: Sequence[MinedExample], k: int, owners: Mapping[str, Sequence[str]] | None = None,
                  query_owners: Mapping[str, Sequence[str]] | None = None,
                  keys: Sequence[str] | None = None) -> dict[int, list[MinedExample]]:
    """Groups per shard: a group goes to the shard of its key owner (``keys``, default
    :func:`group_keys`); a document lives in the shard of the groups it is the positive of (most of
    them, if they differ) or else of its owner, and foreign negatives are replaced by the shard's own
    documents (see :func:`refill`)."""
    owners = owners or {}
    keys = keys if keys is not None else group_keys(examples, owners, query_owners)
    homes = [shard_of(key, k) for key in keys]
    votes: dict[str, dict[int, int]] = {}
    for e, s in zip(examples, homes):
        votes.setdefault(e.positive, {}).setdefault(s, 0)
        votes[e.positive][s] += 1

    def doc_shard(d: str) -> int:
        if d in votes:
            return max(sorted(votes[d]), key=lambda s: votes[d][s])
        return shard_of(next(iter(owners.get(d, ())), d), k)

    docs = {d for e in examples for d in (e.positive, *e.negatives)}
    pools: dict[int, list[str]] = {s: [] for s in range(k)}
    for d in sorted(docs):
        pools[doc_shard(d)].append(d)
    out: dict[int, list[MinedExample]] = {s: [] for s in range(k)}
    for e, s in zip(examples, homes):
        foreign = {n for n in e.negatives if doc_shard(n) != s}
        row = refill(e, foreign, pools[s])
        if row is not None:
            out[s].append(row)
    return out


def refill(example: MinedExample, drop: set[str], pool: Sequence[str]) -> MinedExample | None:
    """``example`` with the negatives in ``drop`` replaced by documents drawn from ``pool``.

    The draw is seeded by the group (the same group gets the same documents on every run); a drawn
    document takes the group's lowest teacher score (a random document ranks below mined negatives).
    Where ``pool`` runs short, :func:`without_docs` cuts the rest and repeats what is left (None when
    no negative is left).
    """
    dropped = [d for d in example.negatives if d in drop]
    if not dropped:
        return example
    used = {example.positive, *example.negatives}
    free = [d for d in pool if d not in used and d not in drop]
    rng = random.Random(f"{example.query_id}\t{example.positive}")
    swap = dict(zip(dropped, rng.sample(free, min(len(dropped), len(free)))))
    low = min(example.teacher)
    replaced = MinedExample(example.query_id, example.positive, tuple(swap.get(d, d) for d in example.negatives),
                            (example.teacher[0], *(low if d in swap else t
                                                   for d, t in zip(example.negatives, example.teacher[1:]))))
    return without_docs(replaced, drop)


@dataclass
class Shard:
    """One shard: its training groups in slices (trained in order), the weight delta after each slice
    (the checkpoints; the last is the shard's delta), what it has seen."""

    slices: list[list[MinedExample]]
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stages_trained: int = 0  # slices trained by the last fit / forget

    @property
    def examples(self) -> list[MinedExample]:
        return [e for rows in self.slices for e in rows]

    @property
    def delta(self) -> dict[str, Any]:
        return self.checkpoints[-1] if self.checkpoints else {}

    @property
    def seen_docs(self) -> set[str]:
        return {d for e in self.examples for d in (e.positive, *e.negatives)}

    @property
    def seen_queries(self) -> set[str]:
        return {e.query_id for e in self.examples}

    def first_slice_holding(self, docs: set[str], queries: set[str]) -> int | None:
        """Index of the first slice whose groups hold any of ``docs`` / ``queries`` (None: none)."""
        for i, rows in enumerate(self.slices):
            if any(e.query_id in queries or docs & {e.positive, *e.negatives} for e in rows):
                return i
        return None


@dataclass
class ShardedModel:
    """``K`` shards over a frozen base scorer, each fed in ``slices`` checkpointed slices;
    :meth:`combined` is the served model."""

    base: Scorer
    recipe: ShardRecipe
    k: int = 8
    combine: str = "mean"
    lora_r: int = 8             # 0: each shard fine-tunes every weight (a full-size delta per shard)
    lora_alpha: int = 16
    lora_targets: str = "attention"  # or "all-linear"
    slices: int = 1             # SISA slices per shard: forgetting restarts from the slice that held the data
    shards: dict[int, Shard] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.combine not in ("mean", "sum"):
            raise LetheError(f"combine must be 'mean' or 'sum', not {self.combine!r}")
        if self.lora_targets not in ("attention", "all-linear"):
            raise LetheError(f"lora_targets must be 'attention' or 'all-linear', not {self.lora_targets!r}")
        if self.k < 1:
            raise LetheError(f"k must be at least 1, not {self.k}")
        if self.slices < 1:
            raise LetheError(f"slices must be at least 1, not {self.slices}")

    def fit(self, examples: Sequence[MinedExample], owners: Mapping[str, Sequence[str]] | None = None,
            query_owners: Mapping[str, Sequence[str]] | None = None) -> float:
        """Train every shard, slice after slice; returns the seconds spent. ``owners`` (doc id -> owners)
        and ``query_owners`` (query id -> owners) decide where each group goes (:func:`assign_shards`)."""
        t0 = time.perf_counter()
        keys = group_keys(examples, owners, query_owners)
        by_pair = {(e.query_id, e.positive): key for e, key in zip(examples, keys)}
        for s, rows in assign_shards(examples, self.k, owners, keys=keys).items():
            self.shards[s] = Shard(self._slice(rows, by_pair))
            self._train(s, 0)
        return time.perf_counter() - t0

    def affected(self, docs: Iterable[str], queries: Iterable[str] = ()) -> list[int]:
        """Shards whose data held any of ``docs`` or ``queries``."""
        docs, queries = set(docs), set(queries)
        return [s for s, sh in self.shards.items() if sh.seen_docs & docs or sh.seen_queries & queries]

    def forget(self, docs: Iterable[str], queries: Iterable[str] = ()) -> tuple[list[int], float]:
        """Drop the data from its shards and retrain each from the checkpoint before the first slice
        that held it (from the base when that is the first slice); returns (shards, seconds)."""
        docs, queries = set(docs), set(queries)
        hit = self.affected(docs, queries)
        t0 = time.perf_counter()
        for s in hit:
            shard = self.shards[s]
            first = shard.first_slice_holding(docs, queries)
            assert first is not None  # affected => some slice holds the data
            pool = sorted(shard.seen_docs - docs)
            for i in range(first, len(shard.slices)):
                shard.slices[i] = [row for e in shard.slices[i]
                                   if e.positive not in docs and e.query_id not in queries
                                   and (row := refill(e, docs, pool)) is not None]
            del shard.checkpoints[first:]
            self._train(s, first)
        return hit, time.perf_counter() - t0

    def proves_forgotten(self, docs: Iterable[str], queries: Iterable[str] = ()) -> bool:
        """True when no shard's data holds any of ``docs`` / ``queries`` (the exactness proof)."""
        return not self.affected(docs, queries)

    def round_checkpoints(self) -> None:
        """Round every checkpoint to float16, as :meth:`save` stores them, so that the model served now
        and the one :meth:`load` rebuilds later are the same."""
        import torch

        for shard in self.shards.values():
            shard.checkpoints = [{n: d.to(torch.float16).to(torch.float32) if hasattr(d, "to") else d
                                  for n, d in ck.items()} for ck in shard.checkpoints]

    def save(self, folder: Path) -> None:
        """Write every shard (its slices' groups and float16 checkpoints) and the settings to ``folder``."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        meta = {"k": self.k, "combine": self.combine, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
                "lora_targets": self.lora_targets, "slices": self.slices,
                "shards": [{"shard": s, "checkpoints": len(sh.checkpoints)} for s, sh in sorted(self.shards.items())]}
        (folder / "shards.json").write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        for s, shard in self.shards.items():
            for i, rows in enumerate(shard.slices):
                save_examples(folder / f"shard-{s}-slice-{i}.jsonl", rows)
            for i, ck in enumerate(shard.checkpoints):
                tensors = {n: d.detach().to("cpu").half().contiguous() for n, d in ck.items() if hasattr(d, "half")}
                save_file(tensors, str(folder / f"shard-{s}-ckpt-{i}.safetensors"))

    @classmethod
    def load(cls, folder: Path, base: Scorer, recipe: ShardRecipe) -> ShardedModel:
        """A model written by :meth:`save`, over ``base`` (the same init weights), trained on by ``recipe``."""
        from safetensors.torch import load_file

        path = folder / "shards.json"
        if not path.exists():
            raise LetheError(f"{folder} holds no sharded model (no shards.json)")
        meta = json.loads(path.read_text(encoding="utf-8"))
        model = cls(base, recipe, k=meta["k"], combine=meta["combine"], lora_r=meta["lora_r"],
                    lora_alpha=meta["lora_alpha"], lora_targets=meta["lora_targets"], slices=meta["slices"])
        for info in meta["shards"]:  # numbers, not strings: a shard number is never mistaken for an id
            s = int(info["shard"])
            slices = [load_examples(folder / f"shard-{s}-slice-{i}.jsonl") for i in range(model.slices)]
            cks = [{n: t.float() for n, t in load_file(str(folder / f"shard-{s}-ckpt-{i}.safetensors")).items()}
                   for i in range(info["checkpoints"])]
            model.shards[s] = Shard(slices, cks)
        return model

    def member(self, s: int) -> Scorer:
        """Shard ``s`` alone: the base with its whole weight change (one member of a score ensemble)."""
        return self._with_deltas([(1.0, self.shards[s].delta)])

    def combined(self) -> Scorer:
        """A copy of the base with ``c * sum_k dW_k`` added (``c`` from ``combine``)."""
        if not self.shards:
            raise LetheError("the sharded model has not been trained (call fit)")
        c = 1.0 / len(self.shards) if self.combine == "mean" else 1.0
        return self._with_deltas([(c, shard.delta) for shard in self.shards.values()])

    def _slice(self, rows: list[MinedExample], keys: Mapping[tuple[str, str], str]) -> list[list[MinedExample]]:
        """Split a shard's groups into slices by a hash of their key owner (one owner's groups in one
        slice, so their deletion restarts the shard from one checkpoint); ``keys``: by (query, positive)."""
        out: list[list[MinedExample]] = [[] for _ in range(self.slices)]
        for e in rows:
            out[shard_of(f"slice\t{keys[(e.query_id, e.positive)]}", self.slices)].append(e)
        return out

    def _with_deltas(self, parts: list[tuple[float, dict[str, Any]]]) -> Scorer:
        """A copy of the base with ``sum c * delta`` added."""
        import torch

        out = self.base.copy()
        params = dict(out.module.named_parameters())
        with torch.no_grad():
            for c, delta in parts:
                for name, d in delta.items():
                    params[name].add_(c * d)
        return out

    def _train(self, s: int, first: int) -> None:
        """Train shard ``s`` from slice ``first`` on, starting from the checkpoint before it (the base
        for slice 0): each slice a LoRA adapter, or every weight when ``lora_r=0``; checkpoint the
        shard's delta after each slice."""
        shard = self.shards[s]
        t0 = time.perf_counter()
        shard.stages_trained = 0
        for i in range(first, len(shard.slices)):
            prev = shard.checkpoints[i - 1] if i else {}
            if not shard.slices[i]:
                shard.checkpoints.append(dict(prev))
                continue
            step = self._train_slice(self._with_deltas([(1.0, prev)]), shard.slices[i])
            shard.checkpoints.append({n: prev.get(n, 0) + d for n, d in step.items()}
                                     | {n: d for n, d in prev.items() if n not in step})
            shard.stages_trained += 1
        shard.seconds = time.perf_counter() - t0

    def _train_slice(self, scorer: Scorer, rows: list[MinedExample]) -> dict[str, Any]:
        """Run the recipe on ``rows`` from the scorer's weights; the weight change it made."""
        import torch

        if self.lora_r <= 0:
            w0 = {n: p.detach().clone() for n, p in scorer.module.named_parameters()}
            self.recipe(scorer, rows)
            trained, prefix = scorer.module, ""
        else:
            trained, prefix, w0 = self._train_lora(scorer, rows)
        with torch.no_grad():
            return {prefix + n: (p.detach() - w0[n]) for n, p in trained.named_parameters()
                    if not torch.equal(p.detach(), w0[n])}

    def _train_lora(self, scorer: Scorer, rows: list[MinedExample]) -> tuple[Any, str, dict[str, Any]]:
        """Attach LoRA to the scorer's transformer, run the recipe, merge; (merged model, its name prefix,
        its weights before training)."""
        from peft import LoraConfig, get_peft_model

        holder, attr = model_slot(scorer)
        inner = getattr(holder, attr)
        w0 = {n: p.detach().clone() for n, p in inner.named_parameters()}
        targets = lora_targets(inner) if self.lora_targets == "attention" else "all-linear"
        cfg = LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=0.0, target_modules=targets)
        setattr(holder, attr, get_peft_model(inner, cfg))
        self.recipe(scorer, rows)
        merged = getattr(holder, attr).merge_and_unload()
        setattr(holder, attr, merged)
        return merged, _prefix(scorer, merged), w0


def model_slot(scorer: Scorer) -> tuple[Any, str]:
    """Where the transformers model sits inside the scorer's model."""
    from lethe.embedding.llm import inner_transformer

    if hasattr(scorer, "query_prompt"):  # bi-encoder: SentenceTransformer -> Transformer module -> auto_model
        return inner_transformer(scorer.model)
    return scorer.model, "model"  # CrossEncoder keeps its transformers model in .model


def _prefix(scorer: Scorer, inner: Any) -> str:
    """Name prefix of ``inner``'s parameters within ``scorer.module``."""
    for name, mod in scorer.module.named_modules():
        if mod is inner:
            return f"{name}." if name else ""
    raise LetheError("internal: the shard's model is not inside the scorer")


def lora_targets(model: Any) -> list[str]:
    """Attention projections of BERT-like (query/key/value) or Llama-like (q/k/v/o_proj) models."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for group in (["query", "key", "value"], ["q_proj", "k_proj", "v_proj", "o_proj"], ["q_lin", "k_lin", "v_lin"]):
        if set(group) <= names:
            return group
    raise LetheError("no known attention projections to put LoRA on")
