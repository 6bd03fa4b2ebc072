"""lethe.embedding."""
