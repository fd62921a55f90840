"""Continuous thoughts (Coconut, Hao et al. 2024): positions whose input embedding is the last layer's hidden
state at the position before, instead of a token's embedding.

A latent model is a plain Hugging Face causal LM with three added tokens, `<|start-latent|>`, `<|latent|>` and
`<|end-latent|>`, and `latent.json` in its directory saying how many thoughts it thinks before answering. The
learner (the `coconut` loss) and the hf rollout engine fill the thoughts the same way: `fill_latents`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

START, LATENT, END = "<|start-latent|>", "<|latent|>", "<|end-latent|>"
SPEC_FILE = "latent.json"


def add_latent_tokens(model, tokenizer, init_token: int) -> dict[str, int]:
    """The three tokens added to the tokenizer and the model, their embeddings (and output rows, when untied)
    copied from `init_token`'s, as the official code does; returns their ids."""
    tokenizer.add_special_tokens({"additional_special_tokens": [START, LATENT, END]})
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (("start", START), ("latent", LATENT),
                                                                           ("end", END))}
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        for matrix in {id(m): m for m in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}.values():
            for token in ids.values():
                matrix[token] = matrix[init_token]
    return ids


def write_spec(model_dir: str | Path, ids: dict[str, int], thoughts: int) -> None:
    from rlcomp.report import write_json

    write_json(Path(model_dir) / SPEC_FILE, {**ids, "thoughts": thoughts})


def read_spec(model_dir: str | Path) -> dict | None:
    """The model's latent spec ({start, latent, end, thoughts}), or None for a model that thinks in tokens."""
    path = Path(model_dir) / SPEC_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting only real tokens (left or right padding alike)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def fill_latents(model, input_ids: torch.Tensor, mask: torch.Tensor, latent_id: int, passes: int) -> torch.Tensor:
    """Input embeddings of `input_ids` with every `latent_id` position replaced, in order, by the last layer's
    (post-norm) hidden state at the position before it: `passes` forward passes, the j-th filling each row's
    j-th thought (gradients flow through all of them). The first pass runs on the token ids, so the embedding
    lookup happens inside the model's forward (where FSDP has its weights gathered); every rank runs `passes`
    passes whatever its rows hold, as FSDP's collectives need."""
    is_latent = input_ids == latent_id
    order = is_latent.long().cumsum(-1) - 1
    pos = positions(mask)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                use_cache=False)
    embeds = out.hidden_states[0]
    for j in range(passes):
        if j:
            out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                        use_cache=False)
        rows, cols = (is_latent & (order == j)).nonzero(as_tuple=True)
        if len(cols):
            embeds = embeds.index_put((rows, cols), out.hidden_states[-1][rows, cols - 1].to(embeds.dtype))
    return embeds
