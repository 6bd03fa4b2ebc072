"""lethe.pipelines."""
