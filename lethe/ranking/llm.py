"""LLM rerankers: query likelihood (pointwise) and listwise ranking (full, sliding window, first token).

The listwise prompt follows *Sliding Windows Are Not the End* (RankGPT wording; METHODS card 3) with
one change that matters for small tokenizers: passage identifiers are strings that the model's
tokenizer keeps as **one token** between brackets (``[A]``, ``[B]``, ...; digits are split one per
token by Llama/Qwen-style tokenizers, so ``[12]`` would be several tokens). That makes parsing
trivial and lets ``first_token`` rank every candidate from the identifier logits of one forward pass.

Any causal LM works (a ``(model, tokenizer)`` pair from the registry); chat models get their chat
template, plain LMs a plain-text prompt.
"""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lethe.errors import LetheError
from lethe.ranking.base import Ranked, RerankStats, TextReranker, order_to_ranked
from lethe.types import Hit

SYSTEM = "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query."
QLM_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
MODES = ("full", "sliding", "first_token")
CONTENT_FREE = "N/A"  # the passage text of the content-free prompt (contextual calibration)
_BRACKETED = re.compile(r"\[([^\[\]\s]{1,6})\]")
PASSAGE_VIEWS = ("head", "query")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("the and for are was were with that this from have has not but its their which these those "
                  "than into can may also been being between there other such more most".split())


# --------------------------------------------------------------------------------------- identifiers
def _single_token_id(tokenizer: Any, label: str) -> int | None:
    """The token id of ``label`` when ``[label]`` tokenizes as ``[``, one token, ``]``; else None."""
    open_ids = tokenizer.encode("[", add_special_tokens=False)
    ids = tokenizer.encode(f"[{label}]", add_special_tokens=False)
    close_ids = tokenizer.encode("]", add_special_tokens=False)
    if len(ids) != len(open_ids) + 1 + len(close_ids) or ids[: len(open_ids)] != open_ids:
        return None
    if ids[len(open_ids) + 1 :] != close_ids:
        return None
    return ids[len(open_ids)]


def identifiers(tokenizer: Any, n: int) -> tuple[list[str], list[int]]:
    """``n`` passage labels that are single, distinct tokens between brackets, and their token ids.

    Tried in order: ``A``-``Z``, ``a``-``z``, two capitals (``AB``), then numbers; raises when the
    tokenizer cannot give ``n`` of them.
    """
    pools = (list(string.ascii_uppercase), list(string.ascii_lowercase),
             [a + b for a in string.ascii_uppercase for b in string.ascii_uppercase],
             [str(i) for i in range(1, 1000)])
    labels: list[str] = []
    ids: list[int] = []
    seen: set[int] = set()
    for pool in pools:
        for label in pool:
            tid = _single_token_id(tokenizer, label)
            if tid is None or tid in seen:
                continue
            labels.append(label)
            ids.append(tid)
            seen.add(tid)
            if len(labels) == n:
                return labels, ids
    raise LetheError(f"the tokenizer has only {len(labels)} single-token passage identifiers; {n} are needed "
                     "(use a smaller window)")


def parse_permutation(text: str, labels: Sequence[str]) -> list[int]:
    """Indexes of ``labels`` in the order the model named them.

    Unknown identifiers and repeats are dropped, anything outside brackets is ignored, and the
    candidates the model did not name follow in their original order — so the result is always a
    permutation of ``range(len(labels))``.
    """
    index = {label: i for i, label in enumerate(labels)}
    order: list[int] = []
    seen: set[int] = set()
    for m in _BRACKETED.finditer(text):
        i = index.get(m.group(1))
        if i is not None and i not in seen:
            order.append(i)
            seen.add(i)
    return order + [i for i in range(len(labels)) if i not in seen]


# --------------------------------------------------------------------------------------- prompts
def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (brackets rewritten to parentheses)."""
    text = " ".join(text.replace("[", "(").replace("]", ")").split())
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]).strip()


def query_snippet(tokenizer: Any, text: str, query: str, max_tokens: int) -> str:
    """A query-biased view of ``text`` in ``max_tokens`` tokens: its head when the head already shares the
    most distinct query terms; else the first half of the budget from the head (the title, usually) and,
    after ``...``, the other half from the sentence on whose window the most query terms fall."""
    sentences = [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]
    head = truncate_tokens(tokenizer, text, max_tokens)
    terms = _terms(query)
    half = max(1, max_tokens // 2)
    opening = truncate_tokens(tokenizer, text, half)
    best, best_hits = "", len(terms & _terms(head))
    for i in range(1, len(sentences)):
        window = truncate_tokens(tokenizer, " ".join(sentences[i:]), half)
        hits = len(terms & _terms(opening + " " + window))
        if hits > best_hits:
            best, best_hits = window, hits
    return f"{opening} ... {best}" if best else head


def passage_view(tokenizer: Any, text: str, query: str, max_tokens: int, view: str = "head") -> str:
    """What the prompt shows of a passage: its first ``max_tokens`` tokens (``head``) or the
    query-biased snippet of that length (``query``, see :func:`query_snippet`)."""
    check_passage_view(view)
    if view == "query":
        return query_snippet(tokenizer, text, query, max_tokens)
    return truncate_tokens(tokenizer, text, max_tokens)


def check_passage_view(view: str) -> None:
    """Raise a clear error unless ``view`` is one of :data:`PASSAGE_VIEWS`."""
    if view not in PASSAGE_VIEWS:
        raise LetheError(f"unknown passage view {view!r}; choose one of {', '.join(PASSAGE_VIEWS)}")


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOP}


def user_prompt(query: str, passages: Sequence[str], labels: Sequence[str]) -> str:
    """The RankGPT / full-ranking user turn over already-truncated passages."""
    n = len(passages)
    lines = [f"I will provide you with {n} passages, each indicated by an identifier []. "
             f"Rank the passages based on their relevance to the search query: {query}.", ""]
    lines += [f"[{label}] {p}" for label, p in zip(labels, passages)]
    example = " > ".join(f"[{label}]" for label in labels[:2][::-1])
    lines += ["", f"Search Query: {query}.",
              f"Rank the {n} passages above based on their relevance to the search query. All the passages "
              "should be included and listed using identifiers, in descending order of relevance. The output "
              f"format should be [] > [], e.g., {example}, Only respond with the ranking results, do not say "
              "any word or explain."]
    return "\n".join(lines)


def prompt_ids(tokenizer: Any, user: str, answer_prefix: str = "") -> list[int]:
    """Token ids of the full prompt up to the start of the answer (chat template when the model has one)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        ids = tokenizer.encode(f"{SYSTEM}\n\n{user}\n\nRanking:\n", add_special_tokens=True)
    if answer_prefix:
        ids = ids + tokenizer.encode(answer_prefix, add_special_tokens=False)
    return ids


def label_text(order: Sequence[int], labels: Sequence[str]) -> str:
    """The target permutation string ``[C] > [A] > ...`` for an order of candidate indexes."""
    return " > ".join(f"[{labels[i]}]" for i in order)


def sliding_windows(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """Bottom-up window spans ``(start, end)`` over ``n`` candidates (RankGPT order)."""
    if window <= 0 or step <= 0:
        raise LetheError(f"window and step must be positive (got {window}, {step})")
    if n <= window:
        return [(0, n)]
    spans = []
    start = n - window
    while True:
        spans.append((start, start + window))
        if start == 0:
            return spans
        start = max(0, start - step)


# --------------------------------------------------------------------------------------- rerankers
def _device(model: Any) -> Any:
    return next(model.parameters()).device


@dataclass
class ListwiseLLMReranker(TextReranker):
    """A causal LM that ranks a list of passages in one prompt.

    ``mode``: ``full`` (every candidate in one prompt, one generated permutation), ``sliding``
    (windows of ``window`` moved bottom-up by ``step``, each window re-ordered in place) or
    ``first_token`` (one forward pass; candidates ordered by the logit of their identifier as the
    first answer token). ``passage_tokens`` caps each passage's length in the prompt. ``constrained``
    (default) lets the token after an opening bracket be only an identifier not yet named, so a
    generated ranking cannot repeat or invent one (what the model leaves unnamed still follows in the
    original order). ``calibration`` (lambda, default 0) is contextual calibration at every
    identifier position [R]: lambda times the identifier log-probabilities the model gives to a
    *content-free* copy of the prompt (every passage replaced by ``N/A``, fed the same answer so far)
    is subtracted, which takes out the position prior (copying the input order) and leaves what the
    passages' content adds. It costs one short extra sequence per prompt, counted in the stats.
    """

    model: Any
    tokenizer: Any
    mode: str = "full"
    window: int = 20
    step: int = 10
    passage_tokens: int = 100
    max_new_tokens: int | None = None
    constrained: bool = True
    calibration: float = 0.0
    passage_view: str = "head"
    version: str = ""
    _labels: dict[int, tuple[list[str], list[int]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LetheError(f"unknown listwise mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.calibration < 0:
            raise LetheError(f"calibration must be >= 0 (got {self.calibration})")
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
        inp = torch.tensor([ids], device=_device(self.model))
        stop = _all_named(self.tokenizer, len(ids), labels)
        prior = self._prior(query, len(passages)) if self.calibration else None
        processors = _identifier_processor(self.tokenizer, len(ids), labels, label_ids, self.constrained,
                                           prior, self.calibration)
        with torch.no_grad():
            out = self.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                                      stopping_criteria=stop, logits_processor=processors)
        new = out[0, len(ids):].tolist()
        stats += RerankStats(calls=1, input_tokens=len(ids), output_tokens=len(new))
        if prior is not None and prior.tokens:  # read only once the answer reached an identifier
            stats += RerankStats(calls=1, input_tokens=prior.tokens)
        return parse_permutation(self.tokenizer.decode(new, skip_special_tokens=True), labels)

    def first_token_scores(self, query: str, passages: Sequence[str], stats: RerankStats) -> np.ndarray:
        """Logit of each candidate's identifier as the first token of the answer (one forward pass)."""
        import torch

        labels, token_ids = self.labels(len(passages))
        ids = prompt_ids(self.tokenizer, user_prompt(query, passages, labels), answer_prefix="[")
        inp = torch.tensor([ids], device=_device(self.model))
        with torch.no_grad():
            logits = _last_logits(self.model, inp)[token_ids].float()
        stats += RerankStats(calls=1, input_tokens=len(ids), output_tokens=0)
        if self.calibration:
            prior = self._prior(query, len(passages), answer_prefix="[")
            logits = logits - self.calibration * torch.log_softmax(prior([])[token_ids].float(), dim=-1)
            stats += RerankStats(calls=1, input_tokens=prior.tokens)
        return logits.cpu().numpy()

    def _prior(self, query: str, n: int, answer_prefix: str = "") -> ContentFreePrior:
        labels, _ = self.labels(n)
        user = user_prompt(query, [CONTENT_FREE] * n, labels)
        return ContentFreePrior(self.model, prompt_ids(self.tokenizer, user, answer_prefix))


class ContentFreePrior:
    """Next-token logits of a content-free prompt that is fed, step by step, the same answer as the
    real prompt (one KV cache, so each call costs only the answer tokens not yet seen)."""

    def __init__(self, model: Any, prompt: Sequence[int]) -> None:
        self.model = model
        self.prompt = list(prompt)
        self.fed = 0  # answer tokens already in the cache
        self.cache: Any = None
        self.tokens = 0  # tokens this prior has read (prompt + answer)
        self.last: Any = None

    def __call__(self, answer: Sequence[int]) -> Any:
        """Logits over the vocabulary after the prompt and ``answer`` (the generated tokens so far)."""
        import torch

        chunk = (self.prompt if self.cache is None else []) + list(answer[self.fed:])
        if not chunk:
            return self.last
        inp = torch.tensor([chunk], device=_device(self.model))
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        with torch.no_grad():  # transformers 5 names the KV cache ``cache``, 4.x ``past_key_values``
            out = self.model(input_ids=inp, use_cache=True, **{key: self.cache})
        self.cache = getattr(out, key)
        self.fed = len(answer)
        self.tokens += len(chunk)
        self.last = out.logits[0, -1]
        return self.last


def _all_named(tokenizer: Any, start: int, labels: Sequence[str]) -> Any:
    """A stopping criterion: generation ends once every identifier has been named."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    wanted = set(labels)

    class AllNamed(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            text = tokenizer.decode(input_ids[0, start:].tolist(), skip_special_tokens=True)
            done = wanted <= {m.group(1) for m in _BRACKETED.finditer(text)}
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([AllNamed()])


def _identifier_processor(tokenizer: Any, start: int, labels: Sequence[str], label_ids: Sequence[int],
                          constrained: bool, prior: ContentFreePrior | None = None, strength: float = 0.0) -> Any:
    """A logits processor acting right after an opening bracket (where an identifier comes next):
    ``constrained`` lets only the identifiers not yet named follow; with a ``prior``, ``strength``
    times its identifier log-probabilities is subtracted (contextual calibration). None if neither."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    if not constrained and prior is None:
        return None

    class IdentifierStep(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            answer = input_ids[0, start:].tolist()
            text = tokenizer.decode(answer, skip_special_tokens=True)
            if not text.endswith("["):
                return scores
            named = {m.group(1) for m in _BRACKETED.finditer(text)} if constrained else set()
            allowed = [t for label, t in zip(labels, label_ids) if label not in named]
            if not allowed:
                return scores
            if prior is not None:
                cf = torch.log_softmax(prior(answer)[allowed].float(), dim=-1).to(scores.dtype)
                scores = scores.clone()
                scores[:, allowed] -= strength * cf
            if constrained:
                mask = torch.full_like(scores, float("-inf"))
                mask[:, allowed] = 0.0
                scores = scores + mask
            return scores

    return LogitsProcessorList([IdentifierStep()])


def _last_logits(model: Any, input_ids: Any) -> Any:
    """Logits of the last position only (``logits_to_keep=1`` where the model supports it)."""
    try:
        out = model(input_ids=input_ids, logits_to_keep=1)
    except TypeError:
        out = model(input_ids=input_ids)
    return out.logits[0, -1]


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
        dev = _device(self.model)
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        t = torch.tensor(target)
        out = []
        for j, p in enumerate(prefixes):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(target))
            out.append(float(logp[j, pos, t].mean()))
        return out
