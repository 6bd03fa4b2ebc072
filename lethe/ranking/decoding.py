"""Decoding for the listwise LLM rerankers: generation constrained to passage identifiers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lethe.ranking.prompts import BRACKETED


def model_device(model: Any) -> Any:
    """The device of the model's first parameter."""
    return next(model.parameters()).device

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
                          constrained: bool) -> Any:
    """A logits processor acting right after an opening bracket (where an identifier comes next): only
    the identifiers not yet named may follow. None unless ``constrained``."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    if not constrained:
        return None

    class IdentifierStep(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            answer = input_ids[0, start:].tolist()
            text = tokenizer.decode(answer, skip_special_tokens=True)
            if not text.endswith("["):
                return scores
            named = {m.group(1) for m in BRACKETED.finditer(text)}
            allowed = [t for label, t in zip(labels, label_ids) if label not in named]
            if not allowed:
                return scores
            mask = torch.full_like(scores, float("-inf"))
            mask[:, allowed] = 0.0
            return scores + mask

    return LogitsProcessorList([IdentifierStep()])


def last_logits(model: Any, input_ids: Any) -> Any:
    """Logits of the last position only (``logits_to_keep=1`` where the model supports it)."""
    try:
        out = model(input_ids=input_ids, logits_to_keep=1)
    except TypeError:
        out = model(input_ids=input_ids)
    return out.logits[0, -1]
