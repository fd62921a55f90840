"""Rewards: answer verifiers, length rewards, their composition from a recipe, and the Ray reward service.

Public names: `reward` (decorator for custom reward functions), `RewardSpec` (a recipe's `reward:` section),
`Scorer` (in-process) and `RewardService` / `start_reward_service` (Ray actor) with the same `score(groups,
step)`, `ReferenceTable` (O1-Pruner's per-prompt reference statistics), `verify` (score responses against
gold answers, safe against hanging inputs), `aes` (accuracy-efficiency score).
"""
from rlcomp.rewards.compose import RewardSpec
from rlcomp.rewards.length import aes
from rlcomp.rewards.reference import ReferenceTable
from rlcomp.rewards.registry import RewardError, reward
from rlcomp.rewards.scorer import Scorer
from rlcomp.rewards.verifiers import VERIFIERS, Scores, verify

__all__ = ["reward", "RewardSpec", "Scorer", "RewardService", "start_reward_service", "ReferenceTable",
           "RewardError", "verify", "Scores", "VERIFIERS", "aes"]


def __getattr__(name: str):
    # The Ray actor on first use (PEP 562): validating a recipe's `reward:` must not import ray.
    if name in ("RewardService", "start_reward_service"):
        from rlcomp.rewards import service

        return getattr(service, name)
    raise AttributeError(f"module 'rlcomp.rewards' has no attribute {name!r}")
