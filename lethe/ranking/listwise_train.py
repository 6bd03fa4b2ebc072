"""Listwise LLM reranker training with complete listwise labels and the importance-aware loss.

The target is the whole permutation ``[C] > [A] > ... > [F]`` (METHODS card 3). The loss is the
weighted next-token NLL over the target tokens, ``L = -sum_i w_i log p(y_i | x, y_<i) / N``: the
tokens of the identifier of the passage at rank ``r`` (brackets included, and the final EOS for the
last rank) weigh ``1 + 1/log2(r + 1)``, the separator tokens (`` >``) weigh ``alpha`` (default 1, as
in the paper's code). A token's role is read from the character it ends on, so merged tokens such as
`` [`` belong to the identifier they open.

Optionally (``first_token_loss`` = lambda > 0) FIRST's learning-to-rank term is added (Reddy et al., EMNLP
2024, arXiv 2406.15657): at the position where the first identifier is generated, the logits of the
candidates' identifier tokens are trained with a RankNet loss over every pair of the label,
``sum_{a<b} log(1 + exp(s_b - s_a)) / (a + b)`` (ranks from 1, normalised by the sum of the weights).
Every pair of the list then teaches the one decision a full ranking starts with (and ``first_token``
mode reads), instead of a single token among ~60 of the permutation's NLL. ``rank_positions=0``
applies the same term at every identifier position, over the candidates not yet named (ours [R]).

One-pass full ranking by the LLM's identifier logits (``objective="scores"``, a weighted Plackett-Luce loss at
the answer's first position) was tried and removed: it flattened the input-order prior and learnt nothing
in its place (RESULTS.md, thirteenth session). The one-pass full-ranking model is the list encoder of
:mod:`lethe.ranking.cross_encoder` (``CETrainConfig(listwise=True)``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lethe.errors import LetheError
from lethe.ranking.prompts import (
    check_passage_view,
    identifiers,
    label_text,
    passage_view,
    prompt_ids,
    sliding_windows,
    user_prompt,
)
from lethe.training.losses import weighted_nll


@dataclass
class ListwiseExample:
    """A query, its candidate passages (first-stage order) and the target order (indexes, best first).

    ``relevant``: how many candidates at the head of ``order`` are judged relevant (None: unknown).
    """

    query: str
    passages: list[str]
    order: list[int]
    doc_ids: list[str] | None = None
    query_id: str | None = None
    relevant: int | None = None

    def __post_init__(self) -> None:
        if sorted(self.order) != list(range(len(self.passages))):
            raise LetheError(f"target order is not a permutation of the {len(self.passages)} candidates")
        if self.relevant is not None and not 0 <= self.relevant <= len(self.order):
            raise LetheError(f"relevant={self.relevant} is outside 0..{len(self.order)} candidates")


@dataclass
class ListwiseTrainConfig:
    """Listwise training settings (LoRA by default; ``lora_r=0`` fine-tunes every weight)."""

    epochs: float = 1.0
    lr: float = 2e-4
    grad_accum: int = 4
    passage_tokens: int = 64
    # what each prompt shows of a passage: its head or the query-biased snippet (see llm.passage_view)
    passage_view: str = "head"
    alpha: float = 1.0
    weighted: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    # LoRA only in the top ``lora_layers`` decoder layers (0: every layer). The frozen layers below need
    # no backward pass, so a step costs about (1 + 2 L/N) / 3 of a full one on an N-layer model.
    lora_layers: int = 0
    # fraction of training lists presented in a random order (see :func:`shuffled`); True means all
    shuffle_inputs: float | bool = False
    warmup: float = 0.1
    # lambda of FIRST's RankNet term on identifier logits (0: the importance-aware NLL alone)
    first_token_loss: float = 0.0
    # how many identifier positions get that term (1: the first, as FIRST; 0: every position) [R]
    rank_positions: int = 1
    seed: int = 42
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        check_passage_view(self.passage_view)


def rank_weight(rank: int) -> float:
    """Weight of the identifier tokens of the passage at (1-based) ``rank``: ``1 + 1/log2(rank + 1)``."""
    return 1.0 + 1.0 / math.log2(rank + 1)


def target_tokens(tokenizer: Any, order: Sequence[int], labels: Sequence[str], alpha: float = 1.0,
                  weighted: bool = True) -> tuple[list[int], list[float]]:
    """Token ids of the target permutation (plus EOS) and the weight of each token."""
    text = label_text(order, labels)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    # rank of each character: identifier "[X]" of rank r -> r; separator " > " -> 0
    char_rank = []
    for r, i in enumerate(order, start=1):
        if r > 1:
            char_rank += [0] * 3
        char_rank += [r] * (len(labels[i]) + 2)
    if len(char_rank) != len(text):
        raise LetheError("internal: target text and its character roles disagree")
    weights = []
    for start, end in offsets:
        r = char_rank[max(start, end - 1)] if end > start else len(order)
        weights.append((alpha if r == 0 else rank_weight(r)) if weighted else 1.0)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        weights.append(rank_weight(len(order)) if weighted else 1.0)
    return ids, weights


@dataclass
class Encoded:
    """One training sequence: prompt + target ids, per-token loss weights (0 on the prompt), the
    candidates' identifier token ids (``id_tokens``, candidate order), the target ``order``, and
    ``heads[k]``: the index of the position whose logits predict the identifier of rank ``k + 1`` (only
    the first when a tokenizer merges the later ones with their bracket)."""

    ids: list[int]
    weights: list[float]
    id_tokens: list[int]
    order: list[int]
    heads: list[int]
    relevant: int | None = None

    @property
    def head(self) -> int:
        """The position whose logits predict the first identifier."""
        return self.heads[0]


def encode_example(tokenizer: Any, ex: ListwiseExample, cfg: ListwiseTrainConfig) -> tuple[list[int], list[float]]:
    """Prompt + target ids, with weight 0 on the prompt tokens."""
    enc = encode(tokenizer, ex, cfg)
    return enc.ids, enc.weights


def encode(tokenizer: Any, ex: ListwiseExample, cfg: ListwiseTrainConfig) -> Encoded:
    """The training sequence of ``ex`` and the position of its first identifier (see :class:`Encoded`)."""
    labels, id_tokens = identifiers(tokenizer, len(ex.passages))
    passages = [passage_view(tokenizer, p, ex.query, cfg.passage_tokens, cfg.passage_view) for p in ex.passages]
    prompt = prompt_ids(tokenizer, user_prompt(ex.query, passages, labels))
    target, weights = target_tokens(tokenizer, ex.order, labels, cfg.alpha, cfg.weighted)
    wanted = set(id_tokens)
    heads = [len(prompt) + j - 1 for j, t in enumerate(target) if t in wanted]
    if not heads or target[heads[0] + 1 - len(prompt)] != id_tokens[ex.order[0]]:
        raise LetheError("internal: the first identifier's token is not where the target starts")
    if len(heads) != len(ex.order):
        heads = heads[:1]
    return Encoded(prompt + target, [0.0] * len(prompt) + weights, list(id_tokens), list(ex.order), heads,
                   ex.relevant)


def rank_positions_loss(logits: Any, enc: Encoded, positions: int, offset: int = 0) -> Any:
    """The RankNet term at the first ``positions`` identifier positions, each over the candidates not yet
    named (``order[k:]``), weighted like their identifiers (``1 + 1/log2(k + 1)``); ``logits`` rows are
    sequence positions minus ``offset``; a list with nothing to compare gives 0."""
    heads = enc.heads[:positions] if positions > 0 else enc.heads
    terms, total = [], 0.0
    for k, h in enumerate(heads):
        if len(enc.order) - k < 2:
            break
        w = rank_weight(k + 1)
        terms.append(w * first_token_rank_loss(logits[h - offset], enc.id_tokens, enc.order[k:]))
        total += w
    return sum(terms) / total if terms else logits.sum() * 0.0


def first_token_rank_loss(logits: Any, id_tokens: Sequence[int], order: Sequence[int]) -> Any:
    """FIRST's weighted RankNet (:func:`lethe.training.losses.ranknet`) over the identifier logits of one
    position (a 1-d vocabulary row), taken in label order ``order``."""
    import torch

    from lethe.training.losses import ranknet

    return ranknet(logits[torch.as_tensor([id_tokens[i] for i in order], device=logits.device)].float())


def target_span(weights: Sequence[float]) -> int:
    """How many final positions' logits the loss needs: from the one before the first weighted token."""
    first = next((i for i, w in enumerate(weights) if w > 0), len(weights) - 1)
    return len(weights) - max(0, first - 1)


def window_examples(ex: ListwiseExample, window: int, step: int) -> list[ListwiseExample]:
    """Sliding-window training examples: each window of the first-stage order, labelled by the
    target order restricted to it (what a sliding-window reranker is asked to do)."""
    rank_of = {i: r for r, i in enumerate(ex.order)}
    out = []
    for start, end in sliding_windows(len(ex.passages), window, step):
        idx = list(range(start, end))
        local = sorted(range(len(idx)), key=lambda j: rank_of[idx[j]])
        relevant = None if ex.relevant is None else sum(rank_of[i] < ex.relevant for i in idx)
        out.append(ListwiseExample(ex.query, [ex.passages[i] for i in idx], local,
                                   [ex.doc_ids[i] for i in idx] if ex.doc_ids else None, ex.query_id, relevant))
    return out


def shuffled(ex: ListwiseExample, rng: random.Random) -> ListwiseExample:
    """``ex`` with its candidates in a random input order and the same target ranking of documents.

    Training on first-stage order teaches a small model to copy it (most labels are then nearly the
    identity); shuffled inputs make copying useless, so the label has to be learned from the texts.
    """
    perm = list(range(len(ex.passages)))
    rng.shuffle(perm)
    where = {old: new for new, old in enumerate(perm)}
    return ListwiseExample(ex.query, [ex.passages[i] for i in perm], [where[i] for i in ex.order],
                           [ex.doc_ids[i] for i in perm] if ex.doc_ids else None, ex.query_id, ex.relevant)


def prepare_model(model: Any, cfg: ListwiseTrainConfig) -> Any:
    """LoRA-wrap ``model`` (``cfg.lora_r > 0``) or make every weight trainable."""
    if cfg.lora_r <= 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    layers = None
    if cfg.lora_layers > 0:
        n = int(model.config.num_hidden_layers)
        layers = list(range(max(0, n - cfg.lora_layers), n))
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=[t for t in targets if t in present], bias="none", task_type="CAUSAL_LM",
                      layers_to_transform=layers)
    return get_peft_model(model, lcfg)


def train_listwise(model: Any, tokenizer: Any, examples: Sequence[ListwiseExample], cfg: ListwiseTrainConfig,
                   on_step: Callable[[int, int, float], None] | None = None,
                   prepare: bool = True) -> tuple[Any, list[float]]:
    """Train on ``examples`` (one sequence per forward, ``grad_accum`` per optimizer step).

    ``prepare=False`` continues training a model whose trainable parameters are already set (e.g.
    a loaded adapter). Returns the (possibly peft-wrapped) model and the loss of each optimizer step.
    """
    import torch

    from lethe.training.loop import LoopSettings, run_loop

    if not examples:
        raise LetheError("no listwise training examples")
    torch.manual_seed(cfg.seed)  # before the LoRA weights are drawn: the same seed, the same adapter
    rng = random.Random(cfg.seed)
    if prepare:
        model = prepare_model(model, cfg)
    if cfg.shuffle_inputs:
        frac = float(cfg.shuffle_inputs)
        examples = [shuffled(ex, rng) if rng.random() < frac else ex for ex in examples]
    encoded = [encode(tokenizer, ex, cfg) for ex in examples]
    steps = max(1, math.ceil(len(encoded) * cfg.epochs / cfg.grad_accum))
    order: list[int] = []
    dev = next(model.parameters()).device

    def step_loss(_: int) -> float:
        """``grad_accum`` sequences, each back-propagated at once (one sequence per forward)."""
        total = 0.0
        for _ in range(cfg.grad_accum):
            if not order:
                order.extend(range(len(encoded)))
                rng.shuffle(order)
            loss = _sequence_loss(model, encoded[order.pop()], cfg, dev) / cfg.grad_accum
            loss.backward()
            total += float(loss.detach())
        return total

    settings = LoopSettings(steps, cfg.lr, 0.0, cfg.warmup, decay=True, grouped_decay=True, seed=cfg.seed,
                            max_seconds=cfg.max_seconds, reseed=False)
    return model, run_loop(model, step_loss, settings, on_step).losses


def _sequence_loss(model: Any, enc: Any, cfg: ListwiseTrainConfig, dev: Any):  # noqa: ANN202
    """Weighted NLL of one encoded example's target tokens (plus the first-token rank loss)."""
    import torch

    ids, w = enc.ids, enc.weights
    keep = target_span(w)
    inp = torch.tensor(ids, device=dev)
    # logits only where a target token is predicted (the prompt's ~1k positions need none)
    logits = model(input_ids=inp.unsqueeze(0), logits_to_keep=keep).logits[0]
    loss = weighted_nll(logits, inp[-keep:], torch.tensor(w[-keep:], device=dev))
    if cfg.first_token_loss:
        rank = rank_positions_loss(logits, enc, cfg.rank_positions, offset=len(ids) - keep)
        loss = loss + cfg.first_token_loss * rank
    return loss
