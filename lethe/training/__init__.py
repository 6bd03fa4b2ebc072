"""Training data shared by every trainer: groups, candidate pools, teacher scores (docs/training.md)."""
