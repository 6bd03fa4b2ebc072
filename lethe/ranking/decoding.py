"""Decoding for the listwise LLM rerankers: generation constrained to passage identifiers, and the
content-free prior of contextual calibration."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from lethe.ranking.prompts import BRACKETED


def model_device(model: Any) -> Any:
    """The device of the model's first parameter."""
    return next(model.parameters()).device

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
        inp = torch.tensor([chunk], device=model_device(self.model))
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        with torch.no_grad():  # transformers 5 names the KV cache ``cache``, 4.x ``past_key_values``
            out = self.model(input_ids=inp, use_cache=True, **{key: self.cache})
        self.cache = getattr(out, key)
        self.fed = len(answer)
        self.tokens += len(chunk)
        self.last = out.logits[0, -1]
        return self.last


def all_named(tokenizer: Any, start: int, labels: Sequence[str]) -> Any:
    """A stopping criterion: generation ends once every identifier has been named."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    wanted = set(labels)

    class AllNamed(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            text = tokenizer.decode(input_ids[0, start:].tolist(), skip_special_tokens=True)
            done = wanted <= {m.group(1) for m in BRACKETED.finditer(text)}
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([AllNamed()])


def identifier_processor(tokenizer: Any, start: int, labels: Sequence[str], label_ids: Sequence[int],
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
            named = {m.group(1) for m in BRACKETED.finditer(text)} if constrained else set()
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


def last_logits(model: Any, input_ids: Any) -> Any:
    """Logits of the last position only (``logits_to_keep=1`` where the model supports it)."""
    try:
        out = model(input_ids=input_ids, logits_to_keep=1)
    except TypeError:
        out = model(input_ids=input_ids)
    return out.logits[0, -1]
