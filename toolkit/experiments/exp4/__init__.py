"""Experiment 4: does the same model give the same greedy output on different GPUs / settings?"""
