"""PPO (Schulman et al. 2017) with a learned critic: per-token advantages by GAE over the response tokens,
whitened over the whole step, and the critic trained on the returns with a clipped value loss."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from rlcomp.advantages import gae, whiten
from rlcomp.algorithms import Algorithm, register_algorithm


@register_algorithm
class PPO(Algorithm):
    loss: ClassVar[str] = "ppo"
    critic_loss: ClassVar[str] = "value"
    needs_critic: ClassVar[bool] = True
    type: Literal["ppo"] = "ppo"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    value_clip: float | None = Field(0.2, gt=0)  # the critic's clip around its old values

    def critic_loss_kwargs(self) -> dict:
        return {"value_clip": self.value_clip}

    def signals(self, groups, token_rewards, fields):
        import torch

        advantages, returns = [], []
        for r, v in zip(token_rewards, fields["values"]):
            adv, ret = gae(torch.tensor([r]), torch.tensor([v]), torch.ones(1, len(r)), self.gamma, self.lam)
            advantages.append(adv[0])
            returns.append(ret[0].tolist())
        flat = torch.cat(advantages)
        flat = whiten(flat, torch.ones_like(flat)).split([len(r) for r in token_rewards])  # over the whole step
        return {"advantages": [a.tolist() for a in flat], "returns": returns, "values_old": fields["values"]}
