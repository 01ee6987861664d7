"""Experiment 2: local and empirical Lipschitz constants of the last token's final hidden state."""
