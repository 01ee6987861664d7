"""Executors: local and debug (submitit subprocess / in-process), Slurm arrays, site profiles."""
