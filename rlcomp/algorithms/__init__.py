"""RL algorithms as objects (prime-rl's orchestrator/algo): one file each, registered by `type`.

An algorithm is its own config (a pydantic model with its loss settings and vetted defaults) plus what the RL
stage needs to know about it, so that `stages/rl.py` never names one:

    loss            the registered loss its policy trains with (rlcomp/losses)
    needs_critic    a value model is trained beside the policy (PPO), with `critic_loss`
    needs_reference a frozen reference model gives log-probs (KL in the loss or in the reward)
    samples_from    "policy": rollouts from the current weights; "reference": from the start model throughout
    signals(...)    scored groups -> the per-token training signals the loss reads (advantages, returns, ...)

A recipe names one as `algorithm: grpo` or `algorithm: {type: grpo, clip_high: 0.28, ...}`.
Adding an algorithm: its file, and one `register_algorithm` line in it (imported below).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from rlcomp.schema import Strict

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    name = cls.model_fields["type"].default
    if name in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is registered twice ({ALGORITHMS[name].__module__} and {cls.__module__})")
    ALGORITHMS[name] = cls
    return cls


class Algorithm(Strict):
    """The settings every policy-gradient algorithm shares; subclasses set `type` and their own defaults."""

    loss: ClassVar[str]
    critic_loss: ClassVar[str | None] = None  # the critic's loss, for algorithms that train one
    needs_critic: ClassVar[bool] = False
    samples_from: ClassVar[Literal["policy", "reference"]] = "policy"

    type: str
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0)  # DAPO clip-higher: 0.28
    dual_clip: float | None = Field(None, gt=1)  # dual-clip PPO (Ye et al. 2020; verl's c = 3): cap -A*r at -c*A for A < 0
    aggregation: Literal["token_mean", "seq_mean", "constant"] = "token_mean"
    kl_coef: float = Field(0.0, ge=0)  # KL to the reference model, in the loss
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_clamp: float | None = Field(None, gt=0)  # clamp the per-token KL to [-c, c] (verl and OpenRLHF: 10)
    kl_in_reward: float = Field(0.0, ge=0)  # per-token k1 KL penalty subtracted from the reward (classic RLHF)
    entropy_coef: float = 0.0

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0 or self.kl_in_reward > 0

    def loss_kwargs(self) -> dict:
        """The loss's keyword arguments from this config (the stage adds `temperature`, the rollout's)."""
        return {"clip_low": self.clip_low, "clip_high": self.clip_high, "aggregation": self.aggregation,
                "entropy_coef": self.entropy_coef, "kl_coef": self.kl_coef, "kl_estimator": self.kl_estimator,
                "kl_clamp": self.kl_clamp, "dual_clip": self.dual_clip}

    def critic_loss_kwargs(self) -> dict:
        return {}

    def signals(self, groups, token_rewards: list[list[float]], fields: dict[str, list]) -> dict[str, list]:
        """Per-token training signals for the samples of `groups` (flattened in order). `token_rewards[i]` is
        sample i's reward per response token (the outcome on the last token, minus any KL penalty); `fields`
        holds what the stage computed for every sample: `old_logprobs`, and `values` when a critic exists."""
        raise NotImplementedError


def parse_algorithm(value):
    """`grpo` or `{type: grpo, ...}` -> the registered algorithm's validated config."""
    if isinstance(value, str):
        value = {"type": value}
    if isinstance(value, dict):
        kind = value.get("type")
        if kind not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {kind!r}; registered: {', '.join(sorted(ALGORITHMS))}")
        return ALGORITHMS[kind].model_validate(value)
    return value


from rlcomp.algorithms import grpo, o1_pruner, ppo  # noqa: E402,F401  (they register themselves)
