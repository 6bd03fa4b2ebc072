"""lethe.unlearning."""
