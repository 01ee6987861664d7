"""Experiment 6: a tipping-point embedding where the top-2 logits tie, and the token flips around it."""
