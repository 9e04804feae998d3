"""Training: parallelism applied from outside the model, the explicit loop, checkpoints, the planner."""
