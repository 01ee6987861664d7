"""Experiment 5: per-layer, per-module local Lipschitz constants (σ₁ of module Jacobians)."""
