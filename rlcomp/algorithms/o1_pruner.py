"""O1-Pruner (Luo et al. 2025): off-policy PPO-clip on responses sampled from the frozen start model pi_ref,
with the length-harmonizing reward R as each response's advantage (rlcomp/losses/o1_pruner.py).

The ratio pi_theta / pi_ref is taken at the rollout temperature (the logits are divided by it, so the
log-probs are those of the distribution that sampled); the official code samples and scores at temperature 1.
The official code's variant: `ratio: sequence` (geometric-mean sequence ratio), and in the reward part
`clip: [-2, 4]`, `normalize: dataset` (R z-scored over the reference samples) with `reference.samples: 2`.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from rlcomp.algorithms import Algorithm, register_algorithm


@register_algorithm
class O1Pruner(Algorithm):
    loss: ClassVar[str] = "o1_pruner"
    samples_from: ClassVar[str] = "reference"
    type: Literal["o1_pruner"] = "o1_pruner"
    aggregation: Literal["token_mean", "seq_mean", "constant"] = "seq_mean"
    ratio: Literal["token", "sequence"] = "token"  # per-token (the paper's PPO form) or the code's geometric mean

    @model_validator(mode="after")
    def _no_kl(self):
        if self.kl_coef or self.kl_in_reward:
            raise ValueError("o1_pruner samples from pi_ref itself: no KL term (its `kl` metric reports the drift)")
        return self

    @property
    def needs_reference(self) -> bool:
        return False  # pi_ref is the behaviour policy: its log-probs come with the samples

    def loss_kwargs(self) -> dict:
        return {"clip_low": self.clip_low, "clip_high": self.clip_high, "aggregation": self.aggregation,
                "entropy_coef": self.entropy_coef, "ratio": self.ratio, "dual_clip": self.dual_clip}

    def signals(self, groups, token_rewards, fields):
        # The length-harmonizing reward itself is the advantage; pi_ref's log-probs are the old ones.
        return {"advantages": [sum(r) for r in token_rewards], "ref_logprobs": fields["old_logprobs"]}
