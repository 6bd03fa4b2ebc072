"""LLM rerankers: query likelihood (pointwise) and listwise ranking (full, sliding window, first token).

The listwise prompt follows *Sliding Windows Are Not the End* (RankGPT wording; METHODS card 3) with
one change that matters for small tokenizers: passage identifiers are strings that the model's
tokenizer keeps as **one token** between brackets (``[A]``, ``[B]``, ...; digits are split one per
token by Llama/Qwen-style tokenizers, so ``[12]`` would be several tokens). That makes parsing
trivial and lets ``first_token`` rank every candidate from the identifier logits of one forward pass.

Any causal LM works (a ``(model, tokenizer)`` pair from the registry); chat models get their chat
template, plain LMs a plain-text prompt. Prompts and passage views live in ``lethe.ranking.prompts``,
constrained decoding in ``lethe.ranking.decoding``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lethe.errors import LetheError
from lethe.ranking.base import Ranked, RerankStats, TextReranker, order_to_ranked
from lethe.ranking.decoding import all_named, identifier_processor, last_logits, model_device
from lethe.ranking.prompts import (
    QLM_PROMPT,
    check_passage_view,
    identifiers,
    parse_permutation,
    passage_view,
    prompt_ids,
    sliding_windows,
    user_prompt,
)
from lethe.types import Hit

MODES = ("full", "sliding", "first_token")


# --------------------------------------------------------------------------------------- rerankers
@dataclass
class ListwiseLLMReranker(TextReranker):
    """A causal LM that ranks a list of passages in one prompt.

    ``mode``: ``full`` (every candidate in one prompt, one generated permutation), ``sliding``
    (windows of ``window`` moved bottom-up by ``step``, each window re-ordered in place) or
    ``first_token`` (one forward pass; candidates ordered by the logit of their identifier as the
    first answer token). ``passage_tokens`` caps each passage's length in the prompt. ``constrained``
    (default) lets the token after an opening bracket be only an identifier not yet named, so a
    generated ranking cannot repeat or invent one (what the model leaves unnamed still follows in the
    original order).
    """

    model: Any
    tokenizer: Any
    mode: str = "full"
    window: int = 20
    step: int = 10
    passage_tokens: int = 100
    max_new_tokens: int | None = None
    constrained: bool = True
    passage_view: str = "head"
    version: str = ""
    _labels: dict[int, tuple[list[str], list[int]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LetheError(f"unknown listwise mode {self.mode!r}; choose one of {', '.join(MODES)}")
        check_passage_view(self.passage_view)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def labels(self, n: int) -> tuple[list[str], list[int]]:
        """Identifiers (and their token ids) for a list of ``n`` passages (cached)."""
        if n not in self._labels:
            self._labels[n] = identifiers(self.tokenizer, n)
        return self._labels[n]

    def _rerank(self, query: str, hits: list[Hit], passages: list[str], k: int | None) -> Ranked:
        passages = [passage_view(self.tokenizer, p, query, self.passage_tokens, self.passage_view) for p in passages]
        stats = RerankStats()
        if self.mode == "first_token":
            scores = self.first_token_scores(query, passages, stats)
            order = list(np.argsort(-scores, kind="stable"))
            return order_to_ranked(hits, order, k, stats, scores)
        if self.mode == "full":
            order = self.rank_window(query, passages, stats)
        else:
            order = list(range(len(passages)))
            for start, end in sliding_windows(len(passages), self.window, self.step):
                sub = order[start:end]
                local = self.rank_window(query, [passages[i] for i in sub], stats)
                order[start:end] = [sub[j] for j in local]
        return order_to_ranked(hits, order, k, stats)

    def rank_window(self, query: str, passages: Sequence[str], stats: RerankStats) -> list[int]:
        """Generate a permutation of ``passages`` (greedy) and parse it."""
        import torch

        labels, label_ids = self.labels(len(passages))
        ids = prompt_ids(self.tokenizer, user_prompt(query, passages, labels))
        max_new = self.max_new_tokens or 6 * len(passages) + 8
        inp = torch.tensor([ids], device=model_device(self.model))
        stop = all_named(self.tokenizer, len(ids), labels)
        processors = identifier_processor(self.tokenizer, len(ids), labels, label_ids, self.constrained)
        with torch.no_grad():
            out = self.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                                      stopping_criteria=stop, logits_processor=processors)
        new = out[0, len(ids):].tolist()
        stats += RerankStats(calls=1, input_tokens=len(ids), output_tokens=len(new))
        return parse_permutation(self.tokenizer.decode(new, skip_special_tokens=True), labels)

    def first_token_scores(self, query: str, passages: Sequence[str], stats: RerankStats) -> np.ndarray:
        """Logit of each candidate's identifier as the first token of the answer (one forward pass)."""
        import torch

        labels, token_ids = self.labels(len(passages))
        ids = prompt_ids(self.tokenizer, user_prompt(query, passages, labels), answer_prefix="[")
        inp = torch.tensor([ids], device=model_device(self.model))
        with torch.no_grad():
            logits = last_logits(self.model, inp)[token_ids].float()
        stats += RerankStats(calls=1, input_tokens=len(ids), output_tokens=0)
        return logits.cpu().numpy()


@dataclass
class QueryLikelihoodReranker(TextReranker):
    """Pointwise: score = mean log-probability of the query's tokens given the passage (UPR style)."""

    model: Any
    tokenizer: Any
    passage_tokens: int = 100
    batch_size: int = 4
    template: str = QLM_PROMPT
    passage_view: str = "head"
    version: str = ""

    def __post_init__(self) -> None:
        check_passage_view(self.passage_view)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _rerank(self, query: str, hits: list[Hit], passages: list[str], k: int | None) -> Ranked:
        stats = RerankStats()
        scores = self.score(query, passages, stats)
        order = list(np.argsort(-scores, kind="stable"))
        return order_to_ranked(hits, order, k, stats, scores)

    def score(self, query: str, passages: Sequence[str], stats: RerankStats | None = None) -> np.ndarray:
        """Mean log p(query | passage) for each passage."""
        stats = stats if stats is not None else RerankStats()
        q_ids = self.tokenizer.encode(" " + query.strip(), add_special_tokens=False)
        seqs = []
        for p in passages:
            shown = passage_view(self.tokenizer, p, query, self.passage_tokens, self.passage_view)
            text = self.template.format(passage=shown)
            seqs.append(self.tokenizer.encode(text, add_special_tokens=True))
        out = []
        for i in range(0, len(seqs), self.batch_size):
            batch = seqs[i : i + self.batch_size]
            out.extend(self._batch_loglik(batch, q_ids))
            stats += RerankStats(calls=1, input_tokens=sum(len(s) + len(q_ids) for s in batch))
        return np.asarray(out, dtype=np.float32)

    def _batch_loglik(self, prefixes: list[list[int]], target: list[int]) -> list[float]:
        import torch

        rows = [p + target for p in prefixes]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):  # right padding: positions stay aligned with an unpadded run
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        dev = model_device(self.model)
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        t = torch.tensor(target)
        out = []
        for j, p in enumerate(prefixes):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(target))
            out.append(float(logp[j, pos, t].mean()))
        return out
