"""Prompts and passage views of the LLM rerankers: identifiers the tokenizer keeps as one token, the
RankGPT-style listwise prompt, the query-likelihood prompt, passage truncation and query-biased views,
sliding windows (used by ``lethe.ranking.llm`` and the listwise trainer)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from lethe.errors import LetheError

SYSTEM = "You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the query."
QLM_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
BRACKETED = re.compile(r"\[([^\[\]\s]{1,6})\]")
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
    for m in BRACKETED.finditer(text):
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
