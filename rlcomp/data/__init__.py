"""Datasets: synthetic reasoning tasks and loaders for math benchmarks, all yielding `Example`s.

Filled in by the data work; the public names below are the interface the rest of rlcomp uses.
"""
from rlcomp.data.loaders import DataSpec, load_examples, verifier_for
from rlcomp.data.synthetic import COT_FORMS, TASKS, Task, get_task, split_of

__all__ = ["DataSpec", "load_examples", "verifier_for", "TASKS", "Task", "get_task", "split_of", "COT_FORMS"]
