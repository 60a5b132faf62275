"""Training: the loop, losses, checkpoints, tracking."""
