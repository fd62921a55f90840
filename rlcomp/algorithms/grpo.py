"""GRPO (Shao et al. 2024) and its group-relative relatives: one scalar advantage per response, from the
rewards of the n responses to the same prompt, broadcast over the response's tokens.

    GRPO:     advantage grpo, aggregation seq_mean, kl_coef 0.04 (the paper); the defaults here follow
              DAPO/Dr. GRPO practice instead: token_mean, no KL
    Dr. GRPO: norm_std false, aggregation constant
    RLOO:     advantage rloo (leave-one-out baseline)
Any group estimator registered in rlcomp/advantages.py can be named by `advantage`.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator

from rlcomp.advantages import GROUP_ESTIMATORS
from rlcomp.algorithms import Algorithm, register_algorithm


@register_algorithm
class GRPO(Algorithm):
    loss: ClassVar[str] = "grpo"
    type: Literal["grpo"] = "grpo"
    aggregation: Literal["token_mean", "seq_mean", "constant"] = "seq_mean"  # the GRPO paper's 1/|o_i| mean
    advantage: str = "grpo"
    norm_std: bool | None = None  # divide by the group's std; None: the estimator's own default (grpo: yes)

    @field_validator("advantage")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in GROUP_ESTIMATORS:
            raise ValueError(f"unknown group advantage {v!r}; registered: {', '.join(sorted(GROUP_ESTIMATORS))}")
        return v

    def signals(self, groups, token_rewards, fields):
        import torch

        totals, i = [], 0
        for group in groups:
            totals.append([sum(token_rewards[i + j]) for j in range(len(group))])
            i += len(group)
        options = {} if self.norm_std is None else {"norm_std": self.norm_std}
        advantages = [GROUP_ESTIMATORS[self.advantage](torch.tensor([row]), **options)[0].tolist() for row in totals]
        return {"advantages": [a for row in advantages for a in row]}
