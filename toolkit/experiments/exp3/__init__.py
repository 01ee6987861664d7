"""Experiment 3: where a perturbation is absorbed by rounding or propagated, across dtypes."""
