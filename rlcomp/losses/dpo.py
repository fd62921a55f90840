"""Preference losses on (chosen, rejected) pairs, over summed response log-probs (OpenRLHF's DPOLoss form).

Each micro-batch holds k whole pairs: rows 0..k-1 the chosen responses, rows k..2k-1 the rejected ones, in the
same order. With s = sum of the response's token log-probs under the policy and s_ref under the frozen
reference (`ref_sequence_logprobs`, computed once before training), h = (s_c - s_ref_c) - (s_r - s_ref_r):

    sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (DPO; eps = label smoothing, cDPO)
    ipo      (h - 1 / (2 beta))^2                                         (IPO on summed log-probs, as OpenRLHF)
    simpo    -log sigmoid(beta (s_c / |c| - s_r / |r|) - gamma)           (reference-free, length-normalised)

`nll_coef` c adds c times the chosen response's mean token NLL (RPO, TRL's `rpo_alpha`): it keeps the chosen
likelihood from falling with the rejected one, DPO's usual way of collapsing a small model.

The loss and every metric are sums over the micro-batch's pairs divided by the step's pair count
(`step_pairs`), so they are the same under any split over ranks and micro-batches. Rewards are
beta * (s - s_ref) (simpo: beta * s / |y|); `reward_accuracy` is the share of pairs whose chosen reward wins.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlcomp.losses import IGNORE, register_loss, token_logprobs

VARIANTS = ("sigmoid", "ipo", "simpo")


@register_loss("dpo", requires=("targets", "ref_sequence_logprobs"), normaliser="pairs")
def dpo_loss(logits: torch.Tensor, batch: dict, beta: float = 0.1, variant: str = "sigmoid",
             label_smoothing: float = 0.0, gamma: float = 0.0, nll_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    targets = batch["targets"]
    k = targets.shape[0] // 2
    seq = token_logprobs(logits, targets).sum(-1)
    lengths = (targets != IGNORE).sum(-1).clamp(min=1)
    if variant == "simpo":
        rewards = beta * seq / lengths
        z = rewards[:k] - rewards[k:] - gamma
        per_pair = -F.logsigmoid(z)
    elif variant in ("sigmoid", "ipo"):
        rewards = beta * (seq - batch["ref_sequence_logprobs"])
        h = (rewards[:k] - rewards[k:]) / beta
        if variant == "sigmoid":
            per_pair = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
        else:
            per_pair = (h - 1 / (2 * beta)).square()
    else:
        raise ValueError(f"unknown DPO variant {variant!r}; choose from {VARIANTS}")
    if nll_coef:
        per_pair = per_pair - nll_coef * seq[:k] / lengths[:k]
    n = batch["step_pairs"]
    chosen, rejected = rewards[:k].detach(), rewards[k:].detach()
    share = lambda x: float(x.sum()) / n  # noqa: E731
    return per_pair.sum() / n, {"chosen_reward": share(chosen), "rejected_reward": share(rejected),
                                "reward_margin": share(chosen - rejected),
                                "reward_accuracy": share((chosen > rejected).float()),
                                "chosen_tokens": share(lengths[:k].float()), "rejected_tokens": share(lengths[k:].float())}
