"""Losses, one per file, registered by name. Each is a pure function on tensors:

    loss_fn(logits [B, T, V], batch: dict of tensors, **kwargs) -> (loss, metrics)

`batch["targets"]` holds the next-token ids aligned with the logits (-100 where no loss is taken); losses
normalise by global counts the driver stores in the batch, so per-rank, per-micro-batch losses sum exactly
to the loss of the whole step.
"""
from __future__ import annotations

from typing import Callable

import torch

LOSSES: dict[str, Callable] = {}
IGNORE = -100


def register_loss(name: str):
    def wrap(fn):
        LOSSES[name] = fn
        return fn

    return wrap


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position (0 where the target is ignored)."""
    safe = targets.clamp(min=0)
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logprobs * (targets != IGNORE)


from rlcomp.losses import sft  # noqa: E402,F401  (registers)
from rlcomp.losses import ppo  # noqa: E402,F401
from rlcomp.losses import grpo  # noqa: E402,F401
from rlcomp.losses import o1_pruner  # noqa: E402,F401
