"""Losses, one per file, registered by name with what the learner needs to know about them.

    loss(outputs, batch: dict of tensors, **kwargs) -> (loss, metrics)

`outputs` are the model's logits [B, T, V] unless the loss owns its forward (`forward(model, batch)`, e.g. for
hidden states, `inputs_embeds` or several passes). `batch["targets"]` holds the next-token ids aligned with
the logits (-100 where no loss is taken). A loss declares the batch fields it `requires` (the learner checks
every micro-batch before the first forward and names a missing one) and its `normaliser`: the global count
it divides by (tokens, sequences or pairs of the whole step, put in each batch by the driver), so per-rank,
per-micro-batch losses sum exactly to the loss of the whole step. Metrics reduce over ranks and micro-batches
as declared: `sum` (the default: a share of a global mean, like the loss) or `mean` (a per-micro-batch value).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

IGNORE = -100
NORMALISERS = {"tokens": "step_target_tokens", "sequences": "step_sequences", "pairs": "step_pairs"}


@dataclass(frozen=True)
class Loss:
    name: str
    fn: Callable
    requires: tuple[str, ...] = ("targets",)
    normaliser: str = "tokens"
    reduce: dict[str, str] = field(default_factory=dict)  # metric -> "sum" | "mean"; unnamed metrics: sum
    forward: Callable | None = None  # forward(model, batch) -> outputs; None: the model's logits

    def __call__(self, outputs, batch: dict, **kwargs):
        return self.fn(outputs, batch, **kwargs)

    def check(self, batch: dict, where: str = "the batch") -> None:
        """Raise ValueError naming the first field this loss needs that the batch lacks."""
        needed = (*self.requires, NORMALISERS[self.normaliser])
        if missing := [f for f in needed if f not in batch]:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(f"loss {self.name!r} needs batch field {missing[0]!r}{more}, which {where} lacks "
                             f"(it has {', '.join(sorted(batch))})")


LOSSES: dict[str, Loss] = {}


def register_loss(name: str, requires: tuple[str, ...] = ("targets",), normaliser: str = "tokens",
                  reduce: dict[str, str] | None = None, forward: Callable | None = None):
    if normaliser not in NORMALISERS:
        raise ValueError(f"loss {name!r}: normaliser {normaliser!r} is not one of {', '.join(NORMALISERS)}")

    def wrap(fn):
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice ({LOSSES[name].fn.__module__} and {fn.__module__})")
        LOSSES[name] = Loss(name, fn, tuple(requires), normaliser, dict(reduce or {}), forward)
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
from rlcomp.losses import dpo  # noqa: E402,F401
from rlcomp.losses import cot_valve  # noqa: E402,F401
from rlcomp.losses import coconut  # noqa: E402,F401
from rlcomp.losses import ccot  # noqa: E402,F401
