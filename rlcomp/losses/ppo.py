"""PPO (Schulman et al. 2017): the clipped policy surrogate and the clipped value loss, plus the pieces the
other policy losses (grpo, o1_pruner) share.

Policy, per response token t with r_t = pi_theta(y_t) / pi_old(y_t) and advantage A_t:
    l_t = max(-r_t A_t, -clip(r_t, 1 - clip_low, 1 + clip_high) A_t)
(clip_low != clip_high is DAPO's clip-higher; `dual_clip` c > 1 also caps l_t at -c A_t where A_t < 0, as
dual-clip PPO and verl do). Value, with critic output V_t, old V_t^old and return G_t:
    l_t = 1/2 max((V_t - G_t)^2, (clip(V_t, V_t^old - c, V_t^old + c) - G_t)^2)

Every reduction divides by global counts the driver puts in the batch (`step_target_tokens`,
`step_sequences`, `max_response_length`), so per-micro-batch, per-rank results sum to the step's value.
"""
from __future__ import annotations

import torch

from rlcomp.losses import IGNORE, register_loss
from rlcomp.losses.kl import kl_estimate

AGGREGATIONS = ("token_mean", "seq_mean", "constant")
# What the policy losses read (step_target_tokens is their normaliser; the other counts serve the aggregations).
POLICY_FIELDS = ("targets", "advantages", "step_sequences", "max_response_length")


def aggregate(values: torch.Tensor, mask: torch.Tensor, batch: dict, mode: str) -> torch.Tensor:
    """Reduce per-token values [B, T] to this micro-batch's share of the step scalar.

    token_mean: sum over all tokens / step_target_tokens (DAPO: long responses weigh by their length)
    seq_mean:   mean over each response's tokens, summed / step_sequences (GRPO paper)
    constant:   sum over all tokens / (max_response_length * step_sequences) (Dr. GRPO: no length bias)
    """
    total = values * mask
    if mode == "token_mean":
        return total.sum() / batch["step_target_tokens"]
    if mode == "seq_mean":  # a response is never split across micro-batches, so its own mean is local
        return (total.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / batch["step_sequences"]
    if mode == "constant":
        return total.sum() / (batch["max_response_length"] * batch["step_sequences"])
    raise ValueError(f"unknown aggregation {mode!r}; choose from {AGGREGATIONS}")


def policy_outputs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target), entropy, mask), each [B, T] and 0 where ignored. Logits are divided by the
    temperature the rollout sampled at, so the log-probs are those of the behaviour distribution."""
    mask = (targets != IGNORE).float()
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    src = logp_all if entropy_grad else logp_all.detach()  # no graph to keep when there is no bonus
    entropy = -(src.exp() * src).sum(-1) * mask
    return logp, entropy, mask


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float,
                      dual_clip: float | None = None):
    """(per-element loss, ratio, 1.0 where a clip binds)."""
    ratio = log_ratio.clamp(-20, 20).exp()  # guard exp() overflow on a far off-policy token
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss, binds = torch.maximum(unclipped, clipped), clipped > unclipped
    if dual_clip is not None:  # a negative advantage with a huge ratio: bound the loss at -c A
        capped = (advantages < 0) & (loss > -dual_clip * advantages)
        loss, binds = torch.where(capped, -dual_clip * advantages, loss), binds | capped
    return loss, ratio, binds.float()


def token_mean(values: torch.Tensor, mask: torch.Tensor, batch: dict) -> float:
    """A metric's share of the step-wide mean over response tokens."""
    return float((values.detach() * mask).sum() / batch["step_target_tokens"])


@register_loss("ppo", requires=POLICY_FIELDS)
def policy_loss(logits: torch.Tensor, batch: dict, temperature: float = 1.0, clip_low: float = 0.2,
                clip_high: float = 0.2, aggregation: str = "token_mean", kl_coef: float = 0.0,
                kl_estimator: str = "k3", entropy_coef: float = 0.0, kl_clamp: float | None = None,
                dual_clip: float | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate - entropy_coef * entropy + kl_coef * KL(pi_theta || pi_ref), all aggregated alike;
    `kl_clamp` c bounds the per-token KL to [-c, c] (verl and OpenRLHF use 10)."""
    logp, entropy, mask = policy_outputs(logits, batch["targets"], temperature, entropy_grad=entropy_coef != 0)
    old = batch.get("old_logprobs", logp.detach())  # absent: on-policy, one optimizer step per rollout batch
    pg, ratio, clipped = clipped_surrogate(logp - old, batch["advantages"], clip_low, clip_high, dual_clip)
    pg_loss = aggregate(pg, mask, batch, aggregation)
    loss = pg_loss - entropy_coef * aggregate(entropy, mask, batch, aggregation) if entropy_coef else pg_loss
    metrics = {"pg_loss": pg_loss.item(), "clip_fraction": token_mean(clipped, mask, batch),
               "entropy": token_mean(entropy, mask, batch), "ratio_mean": token_mean(ratio, mask, batch),
               "approx_kl": token_mean(kl_estimate(logp.detach(), old, "k3"), mask, batch)}
    if kl_coef and "ref_logprobs" not in batch:
        raise KeyError("kl_coef > 0 needs batch['ref_logprobs']")
    if "ref_logprobs" in batch:
        kl = kl_estimate(logp, batch["ref_logprobs"], kl_estimator)
        if kl_clamp is not None:
            kl = kl.clamp(-kl_clamp, kl_clamp)
        if kl_coef:
            loss = loss + kl_coef * aggregate(kl, mask, batch, aggregation)
        metrics["kl"] = token_mean(kl, mask, batch)
    return loss, metrics


@register_loss("value", requires=("targets", "values_old", "returns"))
def value_loss(logits: torch.Tensor, batch: dict, value_clip: float | None = 0.2,
               aggregation: str = "token_mean") -> tuple[torch.Tensor, dict]:
    """Critic loss; `logits` are the critic's outputs [B, T, 1], V_t aligned with targets[:, t]."""
    values = logits.float().squeeze(-1)
    mask = (batch["targets"] != IGNORE).float()
    old, returns = batch["values_old"], batch["returns"]
    err = (values - returns).square()
    if value_clip is None:
        per_token, clipped = 0.5 * err, torch.zeros_like(err)
    else:  # like the policy clip: no credit for moving the value further than value_clip from the old one.
        # min/max, not old + clamp(V - old): that sum differs from V by rounding where the clip does not bind.
        err_clipped = (torch.minimum(torch.maximum(values, old - value_clip), old + value_clip) - returns).square()
        per_token, clipped = 0.5 * torch.maximum(err, err_clipped), (err_clipped > err).float()
    loss = aggregate(per_token, mask, batch, aggregation)
    return loss, {"vf_loss": loss.item(), "vf_clip_fraction": token_mean(clipped, mask, batch),
                  "value_mean": token_mean(values, mask, batch)}
