"""Rerankers (cross-encoder; LLM listwise rerankers come with issue #4) and their training."""

from lethe.ranking.cross_encoder import CETrainConfig, CrossEncoderReranker, Group, train_cross_encoder

__all__ = ["CETrainConfig", "CrossEncoderReranker", "Group", "train_cross_encoder"]
