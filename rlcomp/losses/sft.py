"""Supervised fine-tuning: mean negative log-likelihood of the target tokens over the whole step."""
from __future__ import annotations

import torch

from rlcomp.losses import IGNORE, register_loss, token_logprobs


@register_loss("sft", requires=("targets",), normaliser="tokens")
def sft_loss(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
    targets = batch["targets"]
    nll = -token_logprobs(logits, targets).sum()
    n = batch["step_target_tokens"]  # target tokens in the whole step, over every rank and micro-batch
    correct = ((logits.argmax(-1) == targets) & (targets != IGNORE)).sum()
    return nll / n, {"token_accuracy": float(correct) / float(n)}
