"""lethe.retrieval."""
