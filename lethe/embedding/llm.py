"""A decoder-only LLM as an embedder: last-token (EOS) pooling, instruction on the query side, LoRA.

``build_llm_embedder`` wraps a causal LM checkpoint as a sentence-transformers model
(Transformer -> last-token pooling -> normalise) whose tokenizer appends EOS to every input, so the
pooled state is the EOS token's, as in LG-ANNA / E5-Mistral. ``add_lora`` puts a peft LoRA adapter on
the inner transformer (only the adapter trains); ``save_adapter`` writes just the adapter, which the
registry stores as an ``adapter`` artifact whose ``base`` is the embedder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_llm_embedder(llm_dir: str | Path, max_length: int = 512, device: str = "cpu") -> Any:
    """A SentenceTransformer over the causal LM in ``llm_dir`` with EOS last-token pooling."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(llm_dir), max_seq_length=max_length)
    _append_eos(transformer.tokenizer)
    dim = transformer.get_word_embedding_dimension()
    pooling = models.Pooling(dim, pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device=device)


def _append_eos(tokenizer: Any) -> None:
    """Make a fast tokenizer end every sequence with EOS (and pad with it when it has no pad)."""
    from tokenizers.processors import TemplateProcessing

    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the LLM tokenizer has no EOS token; last-token pooling needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos
    tokenizer.padding_side = "right"
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)])


def inner_transformer(model: Any) -> tuple[Any, str]:
    """``(module, attribute)`` holding the transformers model inside a SentenceTransformer."""
    first = model[0]
    for attr in ("model", "auto_model"):  # sentence-transformers >= 6 keeps it in .model (auto_model: alias)
        if getattr(first, attr, None) is not None and hasattr(getattr(first, attr), "config"):
            return first, attr
    raise ValueError("cannot find the transformers model inside this SentenceTransformer")


def add_lora(model: Any, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> Any:
    """Wrap the inner transformer with a peft LoRA adapter (base frozen); returns the model."""
    from peft import LoraConfig, get_peft_model

    holder, attr = inner_transformer(model)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                     bias="none")
    setattr(holder, attr, get_peft_model(getattr(holder, attr), cfg))
    return model


def save_adapter(model: Any, out_dir: str | Path) -> Path:
    """Save only the LoRA adapter of a model prepared with :func:`add_lora`."""
    holder, attr = inner_transformer(model)
    out = Path(out_dir)
    getattr(holder, attr).save_pretrained(str(out))
    return out
