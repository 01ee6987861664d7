"""Shared numerical primitives used by the experiments (never copied between them)."""
