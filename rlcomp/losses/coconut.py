"""Coconut (Hao et al. 2024): SFT on what follows the continuous thoughts; its forward fills them first
(rlcomp/latent.py). The targets are masked over the question, the thought markers and the thoughts, as in
the official code, so the loss is SFT's."""
from __future__ import annotations

from rlcomp.latent import fill_latents, positions
from rlcomp.losses import register_loss
from rlcomp.losses.sft import sft_loss


def latent_forward(model, batch: dict):
    ids, mask, passes = batch["input_ids"], batch["attention_mask"], int(batch["latent_passes"])
    if not passes:  # the curriculum's first stage: the whole chain in text
        return model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False).logits.float()
    embeds = fill_latents(model, ids, mask, int(batch["latent_id"]), passes)
    return model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False).logits.float()


register_loss("coconut", requires=("targets", "latent_id", "latent_passes"), normaliser="tokens",
              forward=latent_forward)(sft_loss)
