"""Weight unlearning for retrieval models: forget / retain sets, methods, and verification (issue #5)."""

from lethe.training.scorers import BiEncoderScorer, CrossEncoderScorer, group_scores, pair_scores
from lethe.unlearning.base import UnlearnConfig, UnlearnResult, UnlearnTask
from lethe.unlearning.registry import METHODS, get_method
from lethe.unlearning.sets import UnlearnSets, split_examples
from lethe.unlearning.verify import Figures, Thresholds, verdict

__all__ = ["METHODS", "BiEncoderScorer", "CrossEncoderScorer", "Figures", "Thresholds", "UnlearnConfig",
           "UnlearnResult", "UnlearnSets", "UnlearnTask", "get_method", "group_scores", "pair_scores",
           "split_examples", "verdict"]
