"""Cross-encoder reranker and teacher: sentence-transformers ``CrossEncoder``, trained here.

Training is listwise: for each query, the positive and its mined negatives form one group and the
loss is the softmax cross-entropy of the positive within its group (plus, optionally, pointwise
BCE). Users with hub access can load a trained one, e.g. ``hf:cross-encoder/ms-marco-MiniLM-L-6-v2``
(scored by its classification logit). No trained cross-encoder ships on PyPI, so offline a
cross-encoder is grown from a bi-encoder, and then it is scored by the **gated segment-cosine head**
(ours [R]; docs/reranking.md): the pair is laid out as ``[CLS] q [SEP] [CLS] d [SEP]`` (each side
tokenised as the bi-encoder saw it, each side's positions from 0), every attention logit from one
segment to the other gets a learned additive gate ``g`` (in the config, starting at -6), and the score
is ``scale * cos(mean(query states), mean(document states))``. At ``g -> -inf`` this *is* the
bi-encoder, so training starts from a ranker as good as the bi-encoder instead of from a random
classification head on the ``[CLS]`` state (which the bi-encoder never trained: that recipe stayed at
chance for a 30-minute CPU budget), and the gate opens the cross-attention as training finds it useful.

The same head ranks a **whole list in one pass** (``use_segment_head(..., listwise=True)``; ours [R]): the
query and every candidate are segments of one sequence, ``[CLS] q [SEP] [CLS] d1 [SEP] ... [CLS] dn [SEP]``,
each positioned from 0, with one gate on query-candidate attention and a second (``doc_gate``) on
candidate-candidate attention; candidate ``i`` scores ``scale * cos(mean q states, mean d_i states)``. No
candidate has a position in the list, so the scores are permutation-equivariant by construction: the input
order cannot be copied. At both gates -> -inf it is again the bi-encoder.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lethe.ranking.base import Ranked, RerankStats, TextReranker, order_to_ranked
from lethe.training.elr import ELRConfig, ELRTargets, as_targets, prime_targets
from lethe.types import Hit


@dataclass
class CrossEncoderReranker(TextReranker):
    """Scores (query, document) pairs with a ``CrossEncoder``; ``version`` names the artifact."""

    model: Any
    version: str = ""
    batch_size: int = 32
    max_length: int | None = 256

    def score(self, query: str, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Raw logits (higher = more relevant), one per text; a one-pass list model reads them all at once."""
        if is_list_head(segment_head(self.model)):
            import torch

            self.model.model.eval()
            with torch.no_grad():
                return pair_logits(self.model, [(query, t) for t in texts], self.max_length).float().numpy()
        return self.score_pairs([(query, t) for t in texts], show_progress)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], show_progress: bool = False) -> np.ndarray:
        """Raw logits for (query, text) pairs, in batches."""
        import torch

        if not pairs:
            return np.zeros(0, dtype=np.float32)
        if is_list_head(segment_head(self.model)):  # each query's run of pairs is one list, never cut
            return self._score_lists(pairs, show_progress)
        out = []
        self.model.model.eval()
        batches = range(0, len(pairs), self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="cross-encoder scoring", unit="batch")
        with torch.no_grad():
            for i in batches:
                out.append(pair_logits(self.model, pairs[i : i + self.batch_size], self.max_length).float().numpy())
        return np.concatenate(out)

    def _score_lists(self, pairs: Sequence[tuple[str, str]], show_progress: bool) -> np.ndarray:
        lists = query_lists(pairs)
        if show_progress:
            from tqdm.auto import tqdm

            lists = tqdm(lists, desc="one-pass scoring", unit="list")
        return np.concatenate([self.score(q, docs) for q, docs in lists])

    def _rerank(self, query: str, hits: list[Hit], passages: list[str], k: int | None) -> Ranked:
        scores = self.score(query, passages)
        order = np.argsort(-scores, kind="stable")
        n_tokens = self._count_tokens(query, passages)
        calls = 1 if is_list_head(segment_head(self.model)) else -(-len(passages) // self.batch_size)
        return order_to_ranked(hits, order, k, RerankStats(calls=calls, input_tokens=n_tokens), scores)

    def _count_tokens(self, query: str, passages: Sequence[str]) -> int:
        head = segment_head(self.model)
        if is_list_head(head):
            ids, _, _ = list_rows(self.model.tokenizer, query, passages, int(head.get("query_tokens", 48)),
                                  self.max_length or 64, head.get("passage_view", "head"))
            return len(ids)
        if head is not None:
            rows = segment_rows(self.model.tokenizer, [(query, p) for p in passages], self.max_length or 512,
                                int(head.get("query_tokens", 48)))
            return sum(len(r) for r, _ in rows)
        enc = self.model.tokenizer([query] * len(passages), list(passages), truncation="only_second",
                                   max_length=self.max_length or 512)
        return sum(len(ids) for ids in enc["input_ids"])


HEAD_KEY = "lethe_head"   # the config entry that holds the segment-cosine head's settings
GATE_UNITS = 1000.0       # the trained gate parameter is g / GATE_UNITS: Adam moves it ~lr per step, so
                          # g moves ~GATE_UNITS * lr (0.05 at lr 5e-5) while the weights move ~lr


def segment_head(model: Any) -> dict[str, Any] | None:
    """The gated segment-cosine head's settings of a ``CrossEncoder`` (None: scored by its logit)."""
    return getattr(model.model.config, HEAD_KEY, None)


def is_list_head(head: dict[str, Any] | None) -> bool:
    """Whether a segment head ranks whole lists in one pass (see the module docstring)."""
    return bool(head and head.get("list"))


def use_segment_head(model: Any, gate: float = -6.0, scale: float = 20.0, query_tokens: int = 48,
                     listwise: bool = False, doc_gate: float | None = None, passage_view: str = "head") -> None:
    """Score ``model`` (a ``CrossEncoder`` grown from a BERT-style bi-encoder) with the gated
    segment-cosine head: record its settings in the config and give the second token type the first
    one's embedding, so that the untrained model scores as its bi-encoder does (at ``gate`` -> -inf).
    ``listwise``: score each query's candidates together in one pass, candidate-candidate attention
    gated by ``doc_gate`` (default: ``gate``), each candidate shown as ``passage_view`` (``head``: its first
    tokens; ``query``: the query-biased snippet of ``lethe.ranking.prompts.passage_view``)."""
    import torch

    from lethe.ranking.prompts import check_passage_view

    check_passage_view(passage_view)

    types = model.model.base_model.embeddings.token_type_embeddings
    if types.weight.shape[0] < 2:
        raise ValueError("the segment-cosine head needs a model with two token types (BERT-style)")
    with torch.no_grad():
        types.weight[1] = types.weight[0]
    head: dict[str, Any] = {"gate": float(gate), "scale": float(scale), "query_tokens": int(query_tokens)}
    if listwise:
        head.update({"list": True, "doc_gate": float(gate if doc_gate is None else doc_gate),
                     "passage_view": passage_view})
    model.model.config.update({HEAD_KEY: head})


def pair_logits(model: Any, pairs: Sequence[tuple[str, str]], max_length: int | None):  # noqa: ANN202
    """Forward (query, text) pairs through the CrossEncoder's transformer; returns scores (n,): the
    classification logit, or the gated segment-cosine head's score where the model has one."""
    head = segment_head(model)
    if is_list_head(head):
        return group_logits(model, query_lists(pairs), max_length)
    if head is not None:
        return segment_scores(model, pairs, max_length or 512, head)
    tok = model.tokenizer
    enc = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation="only_second",
              max_length=max_length or 512, return_tensors="pt")
    enc = {k: v.to(model.model.device) for k, v in enc.items()}
    return model.model(**enc).logits.view(-1)


def group_logits(model: Any, groups: Sequence[tuple[str, Sequence[str]]], max_length: int | None):  # noqa: ANN201
    """Scores of each (query, candidates) group, laid end to end: a one-pass list model reads each group as
    one list (``max_length``: tokens per candidate), any other model scores its pairs."""
    import torch

    head = segment_head(model)
    if is_list_head(head):
        return torch.cat(list_scores(model, groups, max_length or 64, head))
    return pair_logits(model, [(q, d) for q, ds in groups for d in ds], max_length)


def query_lists(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Runs of consecutive pairs with the same query, as (query, candidates): the lists a one-pass model
    scores (scores come back in pair order)."""
    lists: list[tuple[str, list[str]]] = []
    for q, d in pairs:
        if lists and lists[-1][0] == q:
            lists[-1][1].append(d)
        else:
            lists.append((q, [d]))
    return lists


def list_rows(tokenizer: Any, query: str, passages: Sequence[str], query_tokens: int, passage_tokens: int,
              view: str = "head") -> tuple[list[int], list[int], list[int]]:
    """Token ids of ``[CLS] q [SEP] [CLS] d1 [SEP] ...`` (query cut to ``query_tokens``, each candidate to
    ``passage_tokens``, shown as passage ``view``), each token's segment (0: the query, i: candidate i) and its
    position in its segment."""
    if view != "head":
        from lethe.ranking.prompts import passage_view

        passages = [passage_view(tokenizer, p, query, passage_tokens - 2, view) for p in passages]
    q = tokenizer(query, truncation=True, max_length=query_tokens)["input_ids"]
    docs = tokenizer(list(passages), truncation=True, max_length=passage_tokens)["input_ids"] if passages else []
    ids, seg, pos = list(q), [0] * len(q), list(range(len(q)))
    for i, d in enumerate(docs, start=1):
        ids += d
        seg += [i] * len(d)
        pos += range(len(d))
    return ids, seg, pos


def list_scores(model: Any, lists: Sequence[tuple[str, Sequence[str]]], passage_tokens: int,
                head: dict[str, Any]) -> list[Any]:
    """One forward pass over a batch of lists; per list, ``scale * cos(mean q, mean d_i)`` of each candidate
    under the two gates (query-candidate ``gate``, candidate-candidate ``doc_gate``)."""
    import torch

    view = head.get("passage_view", "head")
    rows = [list_rows(model.tokenizer, q, ps, int(head.get("query_tokens", 48)), passage_tokens, view)
            for q, ps in lists]
    n, width = len(rows), max(len(r[0]) for r in rows)
    ids = torch.zeros(n, width, dtype=torch.long)
    pos = torch.zeros(n, width, dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)
    for b, (r, s, p) in enumerate(rows):
        ids[b, : len(r)], seg[b, : len(r)], pos[b, : len(r)] = torch.tensor(r), torch.tensor(s), torch.tensor(p)
    mask = seg >= 0
    types = (seg > 0).long()
    gate, doc_gate = _gates(model, head)
    same = seg[:, :, None] == seg[:, None, :]
    with_query = (seg[:, :, None] == 0) | (seg[:, None, :] == 0)
    bias = torch.where(same, torch.zeros(()), torch.where(with_query, gate, doc_gate))
    bias = torch.where(mask[:, None, :], bias, torch.tensor(torch.finfo(torch.float32).min / 2))
    dev = model.model.device
    out = model.model.base_model(input_ids=ids.to(dev), token_type_ids=types.to(dev), position_ids=pos.to(dev),
                                 attention_mask=bias[:, None].to(dev)).last_hidden_state
    n_seg = 1 + max(len(ps) for _, ps in lists)
    onehot = torch.nn.functional.one_hot(seg.clamp(min=0), n_seg).to(out.dtype) * mask[..., None].to(out.dtype)
    onehot = onehot.to(dev)
    means = onehot.transpose(1, 2) @ out / onehot.sum(1)[..., None].clamp(min=1)  # [B, segments, H]
    cos = torch.nn.functional.cosine_similarity(means[:, :1], means[:, 1:], dim=-1)
    scale = float(head.get("scale", 20.0))
    return [scale * cos[b, : len(ps)] for b, (_, ps) in enumerate(lists)]


def _gates(model: Any, head: dict[str, Any]) -> tuple[Any, Any]:
    """The query-candidate and candidate-candidate gates: trained parameters while training, else the config's."""
    import torch

    raw = getattr(model.model, "lethe_gate", None)
    gate = raw * GATE_UNITS if raw is not None else torch.tensor(float(head["gate"]))
    raw_doc = getattr(model.model, "lethe_doc_gate", None)
    doc_gate = raw_doc * GATE_UNITS if raw_doc is not None else torch.tensor(float(head.get("doc_gate", head["gate"])))
    return gate, doc_gate


def segment_rows(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int, query_tokens: int
                 ) -> list[tuple[list[int], int]]:
    """Token ids ``[CLS] q [SEP] [CLS] d [SEP]`` of each pair (the query cut to ``query_tokens``, the
    document to what is left of ``max_length``) and the length of its query segment."""
    queries = sorted({q for q, _ in pairs})
    q_ids = dict(zip(queries, tokenizer(queries, truncation=True, max_length=query_tokens)["input_ids"]))
    rows = []
    for q, d in pairs:
        qi = q_ids[q]
        di = tokenizer(d, truncation=True, max_length=max(8, max_length - len(qi)))["input_ids"]
        rows.append((qi + di, len(qi)))
    return rows


def segment_scores(model: Any, pairs: Sequence[tuple[str, str]], max_length: int, head: dict[str, Any]):  # noqa: ANN201
    """``scale * cos(mean query states, mean document states)`` under the gated cross-segment attention."""
    import torch

    rows = segment_rows(model.tokenizer, pairs, max_length, int(head.get("query_tokens", 48)))
    n, width = len(rows), max(len(r) for r, _ in rows)
    ids = torch.zeros(n, width, dtype=torch.long)
    types = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    pos = torch.zeros(n, width, dtype=torch.long)
    for b, (r, nq) in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
        types[b, nq : len(r)] = 1
        pos[b, :nq] = torch.arange(nq)
        pos[b, nq : len(r)] = torch.arange(len(r) - nq)
    gate, _ = _gates(model, head)
    cross = (types[:, :, None] != types[:, None, :]).float()
    bias = torch.where(mask[:, None, :] == 1, cross * gate, torch.tensor(torch.finfo(torch.float32).min / 2))
    dev = model.model.device
    out = model.model.base_model(input_ids=ids.to(dev), token_type_ids=types.to(dev), position_ids=pos.to(dev),
                                 attention_mask=bias[:, None].to(dev)).last_hidden_state
    q_mask = (mask * (types == 0)).unsqueeze(-1).to(out.dtype).to(dev)
    d_mask = (mask * (types == 1)).unsqueeze(-1).to(out.dtype).to(dev)
    qv = (out * q_mask).sum(1) / q_mask.sum(1).clamp(min=1)
    dv = (out * d_mask).sum(1) / d_mask.sum(1).clamp(min=1)
    return float(head.get("scale", 20.0)) * torch.nn.functional.cosine_similarity(qv, dv, dim=-1)


@dataclass
class Group:
    """One listwise training group: a query, its positive and its negatives (texts); ``key``, the
    (query id, positive id) the group was built from (needed by ELR, whose targets are keyed by it);
    ``teacher``, a teacher's scores of [positive, *negatives] (needed by distillation, ``CETrainConfig.distill``)."""

    query: str
    positive: str
    negatives: list[str]
    key: tuple[str, str] | None = None
    teacher: tuple[float, ...] | None = None


@dataclass
class CETrainConfig:
    """Cross-encoder training settings."""

    epochs: float = 1.0
    lr: float = 4e-5
    queries_per_step: int = 4
    max_length: int = 192
    warmup: float = 0.1
    weight_decay: float = 0.01
    bce_weight: float = 0.0
    seed: int = 42
    max_seconds: float | None = None
    # starting cross-segment gate of a segment-cosine head grown from a bi-encoder (-1e4: closed for good,
    # i.e. the bi-encoder fine-tuned in the pair layout; the ablation of RESULTS.md)
    gate: float = -6.0
    # grown from a bi-encoder: rank each group as one list in one pass (the one-pass list head; ``max_length``
    # is then the tokens of each candidate, and a group's size is the list's length)
    listwise: bool = False
    # what the one-pass list head shows of each candidate: ``head`` or the query-biased snippet (``query``)
    passage_view: str = "head"
    # early-learning regularisation for noisy labels (lethe.training.elr) over each group's candidates; every
    # group needs its ``key``. An ELRConfig keeps the targets for one call; an ELRTargets is kept (and
    # forgotten from) by the caller. None: the plain listwise loss
    elr: ELRConfig | ELRTargets | None = None
    # distillation: the loss is ``(1 - distill) * listwise NLL + distill * MarginMSE`` against each group's
    # teacher scores (``Group.teacher``); 0: labels only, 1: the teacher's margins only
    distill: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CETrainConfig:
        """The settings a manifest recorded (unknown keys ignored; ``elr`` from its dict)."""
        kw = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if isinstance(kw.get("elr"), dict):
            kw["elr"] = ELRConfig(**kw["elr"])
        elif not isinstance(kw.get("elr"), ELRConfig | None):
            raise ValueError(f"recorded ELR settings must be a dict, got {kw['elr']!r}")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (an in-memory ``ELRTargets`` is recorded as its config)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        elr = self.elr.config if isinstance(self.elr, ELRTargets) else self.elr
        d["elr"] = None if elr is None else asdict(elr)
        return d


def train_cross_encoder(model: Any, groups: Sequence[Group], cfg: CETrainConfig,
                        on_step: Callable[[int, int, float], None] | None = None) -> list[float]:
    """Train ``model`` (a ``CrossEncoder``, in place) on listwise groups; returns per-step losses.
    With ``cfg.elr`` the loss adds ELR's ``lam * mean log(1 - <t, p>)``, ``p`` the softmax of each group's
    logits, its targets keyed by ``Group.key`` (a ``ValueError`` when a group has none)."""
    from lethe.training.loop import LoopSettings, epoch_batches, run_loop

    targets = as_targets(cfg.elr)
    if targets is not None and any(g.key is None for g in groups):
        raise ValueError("ELR keys its targets by (query id, positive id): give every Group its key")
    if not 0.0 <= cfg.distill <= 1.0:
        raise ValueError(f"distill is a weight in [0, 1], got {cfg.distill}")
    if cfg.distill and any(g.teacher is None or len(g.teacher) != 1 + len(g.negatives) for g in groups):
        raise ValueError("distillation needs the teacher's scores of [positive, *negatives] on every Group")
    prime_targets(targets, model.model, groups, lambda g: g.key,
                  lambda b: _batch_logits(model, b, cfg.max_length)[0], cfg.queries_per_step)
    rng = random.Random(cfg.seed)
    steps = max(1, math.ceil(len(groups) * cfg.epochs / cfg.queries_per_step))
    batches = epoch_batches(groups, cfg.queries_per_step, rng)
    settings = LoopSettings(steps, cfg.lr, cfg.weight_decay, cfg.warmup, decay=True, grouped_decay=True,
                            seed=cfg.seed, max_seconds=cfg.max_seconds)
    with trained_gate(model):
        return run_loop(model.model, lambda _: listwise_loss(model, next(batches), cfg, targets), settings,
                        on_step).losses


@contextmanager
def trained_gate(model: Any) -> Iterator[None]:
    """While open, the segment-cosine head's gate is a parameter of ``model.model`` (trained with the
    weights); on exit its value goes back to the config and the parameter is removed, so that the model
    saves and loads as a plain ``CrossEncoder``. No-op for a logit-scored or adapter-wrapped model."""
    import torch

    head = segment_head(model)
    if head is None or hasattr(model.model, "peft_config"):
        yield
        return
    model.model.lethe_gate = torch.nn.Parameter(torch.tensor(float(head["gate"]) / GATE_UNITS))
    if is_list_head(head):
        model.model.lethe_doc_gate = torch.nn.Parameter(torch.tensor(float(head["doc_gate"]) / GATE_UNITS))
    try:
        yield
    finally:
        new = {**head, "gate": float(model.model.lethe_gate.detach()) * GATE_UNITS}
        del model.model.lethe_gate
        if is_list_head(head):
            new["doc_gate"] = float(model.model.lethe_doc_gate.detach()) * GATE_UNITS
            del model.model.lethe_doc_gate
        model.model.config.update({HEAD_KEY: new})


def listwise_loss(model: Any, batch: Sequence[Group], cfg: CETrainConfig,  # noqa: ANN201
                  targets: ELRTargets | None = None):
    """The training loss of one batch of groups: softmax cross-entropy of each positive over its group (with
    ``targets``: over the groups whose labels ELR keeps, plus ELR's penalty, the targets updated; with
    ``cfg.distill``: mixed with MarginMSE against the groups' teacher scores)."""
    import torch

    from lethe.training.losses import group_nll, margin_mse

    rows, logits, sizes = _batch_logits(model, batch, cfg.max_length)
    teacher = margin_mse(list(rows), [g.teacher for g in batch]) if cfg.distill else 0.0
    if targets is None:
        return (1.0 - cfg.distill) * group_nll(logits, sizes, cfg.bce_weight) + cfg.distill * teacher
    keys = [g.key for g in batch]
    keep = targets.kept(keys)
    label = (group_nll(torch.cat([r for r, k in zip(rows, keep) if k]), [n for n, k in zip(sizes, keep) if k],
                       cfg.bce_weight) if any(keep) else (logits * 0.0).sum())
    return (1.0 - cfg.distill) * label + cfg.distill * teacher + targets.update_and_loss(keys, rows)


def _batch_logits(model: Any, batch: Sequence[Group], max_length: int | None) -> tuple[Any, Any, list[int]]:
    """A batch of groups scored (positive first): per group's logits, all of them end to end, the sizes."""
    sizes = [1 + len(g.negatives) for g in batch]
    logits = group_logits(model, [(g.query, [g.positive, *g.negatives]) for g in batch], max_length)
    return logits.split(sizes), logits, sizes
