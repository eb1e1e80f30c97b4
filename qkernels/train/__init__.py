"""Training harness (see README, "Training")."""
