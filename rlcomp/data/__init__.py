"""Datasets: synthetic reasoning tasks and loaders for math benchmarks, all yielding `Example`s.

Filled in by the data work; the public names below are the interface the rest of rlcomp uses.
"""
