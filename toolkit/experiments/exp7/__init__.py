"""Experiment 7: logit-gap maps around exp6's tie point, zoomed maps and their randomness metrics."""
