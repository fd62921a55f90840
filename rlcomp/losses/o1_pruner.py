"""O1-Pruner (Luo et al. 2025, "Length-Harmonizing Fine-Tuning"): off-policy PPO-clip on responses sampled
from the frozen reference policy pi_ref, with the length-harmonizing reward R(x, y) as the advantage:

    loss = -E[min(r R, clip(r, 1 - eps, 1 + eps) R)],  r = pi_theta(y|x) / pi_ref(y|x)

ratio="token":    r per token, r_t = pi_theta(y_t) / pi_ref(y_t) (the paper's PPO form), then `aggregation`
ratio="sequence": one r per response, exp(mean_t log pi_theta - mean_t log pi_ref) (the official code's
                  geometric mean), averaged over responses.
The batch's `ref_logprobs` are pi_ref's log-probs (pi_ref is also the behaviour policy); `advantages` holds
each response's R broadcast over its tokens.
"""
from __future__ import annotations

import torch

from rlcomp.losses import register_loss
from rlcomp.losses.kl import kl_estimate
from rlcomp.losses.ppo import POLICY_FIELDS, aggregate, clipped_surrogate, policy_outputs, token_mean


@register_loss("o1_pruner", requires=(*POLICY_FIELDS, "ref_logprobs"))
def o1_pruner_loss(logits: torch.Tensor, batch: dict, ratio: str = "token", temperature: float = 1.0,
                   clip_low: float = 0.2, clip_high: float = 0.2, aggregation: str = "seq_mean",
                   entropy_coef: float = 0.0, dual_clip: float | None = None) -> tuple[torch.Tensor, dict]:
    logp, entropy, mask = policy_outputs(logits, batch["targets"], temperature, entropy_grad=entropy_coef != 0)
    ref, adv = batch["ref_logprobs"], batch["advantages"]
    if ratio == "token":
        pg, r, clipped = clipped_surrogate(logp - ref, adv, clip_low, clip_high, dual_clip)
        pg_loss = aggregate(pg, mask, batch, aggregation)
        ratio_mean, clip_fraction = token_mean(r, mask, batch), token_mean(clipped, mask, batch)
    elif ratio == "sequence":
        lengths = mask.sum(-1).clamp(min=1)
        valid = (mask.sum(-1) > 0).float()  # padding rows, if any, count for nothing
        seq_adv = (adv * mask).sum(-1) / lengths  # R is constant over a response's tokens
        pg, r, clipped = clipped_surrogate(((logp - ref) * mask).sum(-1) / lengths, seq_adv, clip_low, clip_high,
                                          dual_clip)
        n = batch["step_sequences"]
        pg_loss = (pg * valid).sum() / n
        ratio_mean, clip_fraction = float((r.detach() * valid).sum() / n), float((clipped * valid).sum() / n)
    else:
        raise ValueError(f"unknown ratio {ratio!r}; choose 'token' or 'sequence'")
    loss = pg_loss - entropy_coef * aggregate(entropy, mask, batch, aggregation) if entropy_coef else pg_loss
    kl = token_mean(kl_estimate(logp.detach(), ref, "k3"), mask, batch)  # pi_ref is the behaviour policy too
    return loss, {"pg_loss": pg_loss.item(), "clip_fraction": clip_fraction, "ratio_mean": ratio_mean,
                  "entropy": token_mean(entropy, mask, batch), "kl": kl, "approx_kl": kl}
