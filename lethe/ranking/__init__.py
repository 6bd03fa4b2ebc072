"""Rerankers behind one interface (cross-encoder, LLM query likelihood, listwise LLM) and their training."""

from lethe.ranking.base import Ranked, Reranked, Reranker, RerankStats, rerank_run
from lethe.ranking.cross_encoder import CETrainConfig, CrossEncoderReranker, Group, train_cross_encoder
from lethe.ranking.llm import ListwiseLLMReranker, QueryLikelihoodReranker

__all__ = ["CETrainConfig", "CrossEncoderReranker", "Group", "ListwiseLLMReranker", "QueryLikelihoodReranker",
           "Ranked", "RerankStats", "Reranked", "Reranker", "rerank_run", "train_cross_encoder"]
