"""Tiny random models with tokenizers trained on a given corpus, for tests (offline, seconds).

The models are untrained (random weights, seeded); they load through the same paths as real
ones: ``SentenceTransformer(dir)`` / ``CrossEncoder(dir)`` for :func:`build_tiny_bert`,
``AutoModelForCausalLM`` / ``AutoTokenizer`` for :func:`build_tiny_llama`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BERT_SPECIALS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
LLAMA_SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>")


def _corpus(corpus: Sequence[str]) -> list[str]:
    texts = [t for t in corpus if isinstance(t, str) and t.strip()]
    if not texts:
        from lethe.errors import LetheError

        raise LetheError("a tiny model needs a corpus with at least one non-empty text")
    return texts


def train_wordpiece(corpus: Sequence[str], vocab_size: int = 500) -> Any:
    """A BERT-style ``transformers.BertTokenizerFast`` whose WordPiece vocab is learnt on corpus.

    The vocab is built here, deterministically (specials, characters, ``##`` continuations, then the
    most frequent words, ties by spelling), rather than with ``WordPieceTrainer``, whose tie-breaking
    changes from run to run: the same corpus must give the same tiny model in every test session.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in _corpus(corpus) for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = list(BERT_SPECIALS) + chars + [f"##{c}" for c in chars]
    vocab += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab = list(dict.fromkeys(vocab))[: max(vocab_size, len(BERT_SPECIALS) + 2 * len(chars))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                             model_max_length=128)


def train_bpe(corpus: Sequence[str], vocab_size: int = 500) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` learnt on corpus, with bos/eos/pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(corpus), BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(LLAMA_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=128)


def build_tiny_bert(out_dir: Path, corpus: Sequence[str], seed: int = 0) -> Path:
    """Save a tiny random BERT sentence-transformer (Transformer + mean Pooling + Normalize,
    32-d) with a WordPiece vocab learnt on ``corpus`` in ``out_dir``; returns ``out_dir``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel

    modules = _st_modules()
    tokenizer = train_wordpiece(corpus)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bert = BertModel(config)
    out_dir = Path(out_dir)
    hf_dir = Path(tempfile.mkdtemp(prefix="tiny-bert-"))
    try:
        bert.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        transformer = modules.Transformer(str(hf_dir), max_seq_length=128)
        pooling = modules.Pooling(config.hidden_size, "mean")
        model = SentenceTransformer(modules=[transformer, pooling, modules.Normalize()],
                                    device="cpu")
        model.save(str(out_dir))
    finally:
        shutil.rmtree(hf_dir, ignore_errors=True)
    return out_dir


def _st_modules() -> Any:
    """sentence-transformers' module classes (moved in v6; ``models`` before)."""
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def build_tiny_llama(out_dir: Path, corpus: Sequence[str], seed: int = 0, max_positions: int = 128) -> Path:
    """Save a tiny random Llama (32-d, 2 layers, 2 heads, ``max_positions`` long) and a BPE
    tokenizer learnt on ``corpus`` in ``out_dir`` for ``AutoModelForCausalLM`` / ``AutoTokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_bpe(corpus)
    tokenizer.model_max_length = max_positions
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


#: a small corpus for tests that need no particular text
TINY_CORPUS: tuple[str, ...] = (
    "the quick brown fox jumps over the lazy dog",
    "search engines rank documents by relevance to a query",
    "a forgotten document must not survive in an old checkpoint",
    "dense retrieval encodes queries and passages into vectors",
    "bm25 scores terms by frequency and inverse document frequency",
    "the registry records which documents went into every model",
    "students learn from the scores of a cross encoder teacher",
    "machine unlearning removes the influence of training data",
)
