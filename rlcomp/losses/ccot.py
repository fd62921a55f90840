"""Compressed Chain of Thought (CCoT, Cheng & Van Durme 2024; rlcomp/stages/ccot.py): its two losses, each with
its own forward, and the contemplation pass the stage runs on the learner (`LearnerGroup.apply`).

- `ccot_phi`: the contemplator phi, teacher-forced. The batch holds the gold sequences [prompt; chain]
  (`input_ids`); a forward of the frozen model (the LoRA branches zeroed) gives the gold states z at every layer.
  phi's sequence is [prompt; k contemplation positions], contemplation i's input embedding the gold layer-l state
  z_{i-1}^l (z_0: the prompt's last token), or with `ccot_own_steps` the layer-l state phi itself made at the
  position before, contemplating on its own (no gradient); the loss compares phi's layer-j state there with z_i^j:
  (1/k) sum_i MSE(z_i^j, zhat_i^j) / var(z_i^j), MSE and variance over the hidden dimension, per sequence
  (normaliser: sequences).
- `ccot_decode`: the decoder psi, SFT on the answer after [prompt; contemplation positions], the input of each of
  its decoder layers there the state phi had at that layer (carried in the batch), so that psi attends to keys and
  values made from phi's states, as the paper's psi reads phi's key-value cache.

Batch fields (K: the most contemplation positions of a row): `ccot_at` [B, K] where contemplation i sits in the
model's sequence, `ccot_valid` [B, K] 1 for a row's real ones; phi also `ccot_src` / `ccot_dst` [B, K] (the gold
positions of its inputs and targets), `ccot_mask` (phi's attention mask), `ccot_layer` j and `feedback_layer` l
(hidden-state indices: 0 the embeddings, L the last layer); psi `ccot_states` [B, K, L, D] (decoder layer j's
input at contemplation i).
"""
from __future__ import annotations

import torch

from rlcomp.latent import contemplate, layer_inputs, positions, put_vectors
from rlcomp.losses import register_loss
from rlcomp.losses.cot_valve import per_sample_lora_scale
from rlcomp.losses.sft import sft_loss


def gather(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states [B, T, D] at index [B, K] -> [B, K, D]."""
    return states[torch.arange(len(states), device=states.device)[:, None], index]


@torch.no_grad()
def frozen_states(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple:
    """The input model theta's hidden states (phi's LoRA branches zeroed): the gold states."""
    with per_sample_lora_scale(model, torch.zeros(len(ids), device=ids.device)):
        return model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True,
                     use_cache=False).hidden_states


def phi_forward(model, batch: dict) -> dict:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    j, l = int(batch["ccot_layer"]), int(batch["feedback_layer"])
    at, valid = batch["ccot_at"], batch["ccot_valid"]
    gold = frozen_states(model, ids, mask)
    if "ccot_own_steps" in batch:  # phi's inputs: the states it makes contemplating on its own, as at inference
        with torch.no_grad():
            own, _ = contemplate(model, batch["ccot_prompt_ids"], batch["ccot_prompt_mask"], l,
                                 int(batch["ccot_own_steps"]))
        inputs = own[:, : at.shape[1], 0]  # hidden-state index 0 at contemplation i: its input, phi's state before
    else:
        inputs = gather(gold[l], batch["ccot_src"])
    phi_mask = batch["ccot_mask"]
    # phi's prompt embeddings are the gold pass's (the same tokens; the embedding has no LoRA branch)
    embeds = put_vectors(gold[0][:, : phi_mask.shape[1]], at, valid, inputs)
    hidden = model(inputs_embeds=embeds, attention_mask=phi_mask, position_ids=positions(phi_mask),
                   output_hidden_states=True, use_cache=False).hidden_states[j]
    return {"pred": gather(hidden, at).float(), "target": gather(gold[j], batch["ccot_dst"]).float(), "valid": valid}


def normalised_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row: (1/k) sum_i MSE(z_i, zhat_i) / var(z_i) over its k valid positions ([B, K, D] -> [B]); the
    variance is the population variance of z_i over the hidden dimension."""
    valid = valid.float()
    ratio = (pred - target).square().mean(-1) / target.var(-1, unbiased=False).clamp_min(1e-8)
    return (ratio * valid).sum(-1) / valid.sum(-1).clamp_min(1)


@register_loss("ccot_phi", requires=("ccot_at", "ccot_valid", "ccot_src", "ccot_dst", "ccot_mask", "ccot_layer",
                                     "feedback_layer"), normaliser="sequences", forward=phi_forward)
def ccot_phi_loss(outputs: dict, batch: dict):
    per_row = normalised_mse(outputs["pred"], outputs["target"], outputs["valid"])
    return per_row.sum() / batch["step_sequences"], {}


def decode_forward(model, batch: dict) -> torch.Tensor:
    """One pass on the token ids, the contemplator's states put at the contemplation positions' inputs of every
    decoder layer (`layer_inputs`)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with layer_inputs(model, batch["ccot_at"], batch["ccot_valid"], batch["ccot_states"]):
        return model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False).logits.float()


register_loss("ccot_decode", requires=("targets", "ccot_at", "ccot_valid", "ccot_states"), normaliser="tokens",
              forward=decode_forward)(sft_loss)


def gold_batch(model, batch: dict) -> torch.Tensor:
    """For `LearnerGroup.apply`: the frozen model's (phi's LoRA branches zeroed) hidden states at every layer at
    the gold positions `ccot_dst` of the gold sequences `input_ids` ([B, K, L + 1, D]), to hold phi's own
    contemplation against."""
    gold = frozen_states(model, batch["input_ids"], batch["attention_mask"])
    return torch.stack([gather(h, batch["ccot_dst"]) for h in gold], 2)


def contemplate_batch(model, batch: dict) -> torch.Tensor:
    """For `LearnerGroup.apply`: phi's contemplation after the batch's left-padded prompts, `ccot_steps`
    positions (the same on every rank), fed back from hidden-state index `feedback_layer`; every hidden state
    there ([B, n, L + 1, D]), in the precision the learner computes in (the stage keeps them all for psi)."""
    states, _ = contemplate(model, batch["input_ids"], batch["attention_mask"], int(batch["feedback_layer"]),
                            int(batch["ccot_steps"]))
    return states
