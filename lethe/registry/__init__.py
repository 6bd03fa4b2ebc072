"""lethe.registry."""
