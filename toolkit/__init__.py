"""toolkit: batch campaigns that study the numerical instability of large language models.

A YAML manifest names experiments, target GPU types and numerics settings; `toolkit submit`
expands it into tasks, runs them (locally or as Slurm arrays) and gathers every tensor into one
HDF5 store per campaign.  Heavy libraries are imported lazily so the CLI starts instantly.
"""

__version__ = "0.1.0"
