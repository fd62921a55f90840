"""GRPO (Shao et al. 2024, DeepSeekMath) and its variants, as kwargs of one loss.

The loss is PPO's clipped surrogate (rlcomp.losses.ppo) with the group-normalised advantage of each response
broadcast over its tokens (rlcomp.advantages "grpo"), and optionally KL to the reference in the loss:

    GRPO:     aggregation="seq_mean" (1/G sum_i 1/|o_i| sum_t), kl_coef=0.04, kl_estimator="k3"
    DAPO:     aggregation="token_mean", clip_low=0.2, clip_high=0.28, kl_coef=0
    Dr. GRPO: aggregation="constant" (sum_t / (max_response_length * G)), advantages with norm_std=False

The only difference from "ppo" is the default aggregation (the GRPO paper's per-response mean).
"""
from __future__ import annotations

from rlcomp.losses import register_loss
from rlcomp.losses.ppo import POLICY_FIELDS, policy_loss


@register_loss("grpo", requires=POLICY_FIELDS)
def grpo_loss(logits, batch, aggregation: str = "seq_mean", **kwargs):
    """See rlcomp.losses.ppo.policy_loss for the kwargs (temperature, clip_low/high, kl_*, entropy_coef)."""
    return policy_loss(logits, batch, aggregation=aggregation, **kwargs)
