"""Experiment 1: layer-wise propagation of a last-token embedding perturbation along singular directions."""
