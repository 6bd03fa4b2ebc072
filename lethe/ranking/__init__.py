"""lethe.ranking."""
