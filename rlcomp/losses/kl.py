"""KL divergence to a reference model, estimated per sampled token (Schulman, "Approximating KL
Divergence", 2020). Tokens are sampled from pi_theta; with log r = log pi_ref - log pi_theta:

    k1 = -log r                 unbiased, high variance, can be negative
    k2 = (log r)^2 / 2          biased, low variance, >= 0
    k3 = (r - 1) - log r        unbiased, low variance, >= 0   (GRPO's KL-in-loss)

Used in the loss (`kl_coef`, `kl_estimator` of the policy losses) or in the reward (`kl_penalty_in_reward`,
classic RLHF: the stage subtracts the returned per-token penalty from the per-token rewards).
"""
from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from log-probs of tokens sampled from pi_theta."""
    log_r = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    if estimator == "k3":
        log_r = log_r.clamp(-20, 20)  # exp() of a far-off token would overflow to inf and NaN the gradient
        return log_r.exp() - 1 - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; choose from {ESTIMATORS}")


def kl_penalty_in_reward(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                         coef: float, estimator: str = "k1") -> torch.Tensor:
    """Per-token penalty coef * KL (0 where mask is 0), detached: rewards carry no gradient."""
    return coef * kl_estimate(logprobs, ref_logprobs, estimator).detach() * mask
