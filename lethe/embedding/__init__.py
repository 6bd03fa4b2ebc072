"""Encoders (bi-encoders, instruction prompts) and the embedding cache."""

from lethe.embedding.cache import EmbeddingCache
from lethe.embedding.encoders import Encoder, SentenceTransformerEncoder

__all__ = ["EmbeddingCache", "Encoder", "SentenceTransformerEncoder"]
