"""CoT-Valve++ (Ma et al. 2025): SFT with the LoRA branch scaled per sample, W + beta_i * delta for sample i,
where beta_i = 1 - (m_i - m_min) / (m_max - m_min) ranks the sample's length among its question's solutions
(the shortest trains the full branch, the longest none of it). The loss is SFT's; the forward is its own."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from rlcomp.losses import register_loss
from rlcomp.losses.sft import sft_loss


@contextmanager
def per_sample_lora_scale(model, scale: torch.Tensor):
    """Within the block, every LoRA branch's output for batch row i is multiplied by scale[i] (peft adds
    `lora_B(lora_A(x)) * scaling` to the base layer's output: the hook scales lora_B's output)."""
    from peft.tuners.lora import LoraLayer

    def hook(module, args, output):
        return output * scale.to(output.dtype).view(-1, *([1] * (output.dim() - 1)))

    handles = [b.register_forward_hook(hook) for m in model.modules() if isinstance(m, LoraLayer)
               for b in m.lora_B.values()]
    if not handles:
        raise ValueError("a per-sample LoRA scale needs a LoRA model (set learner.lora)")
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lora_scaled_forward(model, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    with per_sample_lora_scale(model, batch["lora_scale"]):
        return model(**inputs, use_cache=False).logits.float()


register_loss("sft_lora_scaled", requires=("targets", "lora_scale"), normaliser="tokens",
              forward=lora_scaled_forward)(sft_loss)
