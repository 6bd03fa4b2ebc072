"""lethe.store."""
