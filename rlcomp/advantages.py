"""Advantage estimators, pure functions on tensors, registered by name (verl's core_algos registry).

    ADVANTAGES["grpo"](rewards [G, n], norm_std=True) -> [G, n]
    ADVANTAGES["rloo"](rewards [G, n]) -> [G, n]
    ADVANTAGES["gae"](rewards [B, T], values [B, T], mask [B, T], gamma, lam) -> (advantages, returns)

Group estimators give one scalar per response; the RL stage broadcasts it over the response's tokens.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # tensor methods only: importing this registry (recipe validation does) loads no torch
    import torch

ADVANTAGES: dict[str, Callable] = {}
GROUP_ESTIMATORS: dict[str, Callable] = {}  # rewards [G, n] -> advantages [G, n]: what `algorithm.advantage` names


def register_advantage(name: str, group: bool = True):
    """Register an estimator; `group=True` for the form rewards [G, n] (-> [G, n]) that GRPO-style algorithms
    call, with `norm_std` as the only option they may pass."""
    def wrap(fn):
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator {name!r} is registered twice")
        ADVANTAGES[name] = fn
        if group:
            GROUP_ESTIMATORS[name] = fn
        return fn

    return wrap


@register_advantage("grpo")
def grpo_advantages(rewards: torch.Tensor, norm_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024): A_i = (r_i - mean(r)) / (std(r) + eps) within each group (row), std unbiased
    as in TRL/verl. norm_std=False is Dr. GRPO (Liu et al. 2025): A_i = r_i - mean(r), no difficulty bias.
    An all-equal group gets zeros (0 / (0 + eps)), and so does a group of one."""
    centered = rewards - rewards.mean(-1, keepdim=True)
    if not norm_std or rewards.shape[-1] < 2:  # a single sample has no spread (torch would give NaN)
        return centered
    return centered / (rewards.std(-1, keepdim=True) + eps)


@register_advantage("rloo")
def rloo_advantages(rewards: torch.Tensor, norm_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j = n/(n-1) (r_i - mean);
    norm_std=True also divides by the group's std (as GRPO does)."""
    n = rewards.shape[-1]
    if n < 2:
        return rewards.new_zeros(rewards.shape)
    adv = (rewards - rewards.mean(-1, keepdim=True)) * n / (n - 1)
    return adv / (rewards.std(-1, keepdim=True) + eps) if norm_std else adv


@register_advantage("gae", group=False)
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the response tokens:

        delta_t = r_t + gamma V_{t'} - V_t,   A_t = delta_t + gamma lam A_{t'},   returns_t = A_t + V_t

    where t' is the next unmasked position (V, A = 0 after the last). Masked positions (padding, prompt) are
    skipped, not treated as steps, and come back as 0."""
    mask = mask.to(values.dtype)
    next_value = values.new_zeros(values.shape[0])
    next_adv = values.new_zeros(values.shape[0])
    advantages = values.new_zeros(values.shape)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        adv = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * next_adv
        advantages[:, t] = adv * m
        next_value = values[:, t].where(m > 0, next_value)  # a masked step passes the carry through
        next_adv = adv.where(m > 0, next_adv)
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the unmasked elements (unbiased variance), 0 where masked. Apply to the whole
    step's advantages before splitting into micro-batches, as PPO implementations do."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = ((x - mean).square() * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * (var + eps).rsqrt()
    return (out if shift_mean else out + mean) * mask
