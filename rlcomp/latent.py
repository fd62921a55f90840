"""Thinking in hidden states: positions whose input embedding is a hidden state at the position before, instead
of a token's embedding.

Coconut (Hao et al. 2024): continuous thoughts, the last layer's state fed back. A Coconut model is a plain Hugging
Face causal LM with three added tokens, `<|start-latent|>`, `<|latent|>` and `<|end-latent|>`, and `latent.json`
in its directory saying how many thoughts it thinks before answering. The learner (the `coconut` loss) and the hf
rollout engine fill the thoughts the same way: `fill_latents`.

CCoT (Cheng & Van Durme 2024): contemplation tokens, a middle layer's state fed back, made by a contemplator
model beside the decoder (below: `contemplate`, the END head, the directory layout). The stage and the engine
contemplate the same way.

The hf engine asks `load_thinker` how a model thinks; `latent_kind` tells without loading anything.
"""
from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from rlcomp.models import decoder_layers

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


# Compressed Chain of Thought (CCoT, Cheng & Van Durme 2024; rlcomp/stages/ccot.py). A CCoT model directory is
# the decoder psi as a plain Hugging Face model, with the contemplator phi beside it: `contemplator/` (a Hugging
# Face model), `end_head.safetensors` (the END head's tensors: `EndHead`) and `ccot.json` ({layer, r, cap, and
# `filled_layers` where the decoder reads the contemplator's states at its first decoder layers only}).
CCOT_SPEC_FILE = "ccot.json"
CONTEMPLATOR = "contemplator"
END_HEAD = "end_head.safetensors"


def read_ccot_spec(model_dir: str | Path) -> dict | None:
    """The model's CCoT spec ({layer, r, cap}), or None for a model that is not a CCoT model."""
    path = Path(model_dir) / CCOT_SPEC_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def latent_kind(model_dir: str | Path) -> str | None:
    """"coconut" or "ccot" for a model that thinks in hidden states before answering; None for one that thinks in
    tokens (reads two small files: no torch)."""
    return "coconut" if read_spec(model_dir) else "ccot" if read_ccot_spec(model_dir) else None


def put_vectors(embeds: torch.Tensor, at: torch.Tensor, valid: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """`embeds` [B, T, D] with row b's position at[b, i] replaced by vectors[b, i] wherever valid[b, i] ([B, K])."""
    rows, slots = valid.bool().nonzero(as_tuple=True)
    if not len(rows):
        return embeds
    return embeds.index_put((rows, at[rows, slots]), vectors[rows, slots].to(embeds.dtype))


def cached(out) -> dict:
    """The forward argument that continues from `out`'s key-value cache (transformers 5.2x renamed it)."""
    return {"cache": out.cache} if hasattr(out, "cache") else {"past_key_values": out.past_key_values}


def contemplate(model, input_ids: torch.Tensor, mask: torch.Tensor, layer: int, steps: int, stop=None):
    """CCoT's contemplation after left-padded prompts: at most `steps` positions appended, the input embedding of
    each the layer-`layer` hidden state (`hidden_states[layer]`: 0 the embeddings, L the last layer's) at the
    position before it, the first one's the prompt's last token's. Returns (states [B, n, L + 1, D]: every
    hidden state at the contemplation positions, in order: states[:, i, layer] is contemplation token i, states[:,
    i, j] the input of decoder layer j there, states[:, :, L] the last layer's (post-norm); counts [B]: per row,
    the positions up to and including the first where `stop(states[:, i, L])` ([B] bools, the END head) says stop,
    else n). One forward pass on the prompts' token ids (so that the embedding lookup happens inside the model's
    forward, where FSDP has its weights), then one per position on its embedding alone, with the key-value cache;
    without `stop`, every call runs exactly steps + 1 passes, as FSDP's collectives need. With `stop`, the passes
    end once every row has stopped."""
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True,
                use_cache=True)
    dtype, feed = out.hidden_states[0].dtype, out.hidden_states[layer][:, -1]
    rows, depth = len(input_ids), len(out.hidden_states)
    at = positions(mask)[:, -1:]  # left padding: every row's last real token is at the right edge
    counts = torch.full((rows,), steps, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    states = []
    for i in range(steps):
        mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
        out = model(inputs_embeds=feed.to(dtype)[:, None], attention_mask=mask, position_ids=at + i + 1,
                    **cached(out), output_hidden_states=True, use_cache=True)
        states.append(torch.stack([h[:, -1] for h in out.hidden_states], 1))
        feed = out.hidden_states[layer][:, -1]
        if stop is not None:
            now = stop(states[-1][:, -1]) & ~done
            counts[now] = i + 1
            done |= now
            if bool(done.all()):
                break
    counts = torch.where(done, counts, len(states))
    return (torch.stack(states, 1) if states else feed.new_zeros(rows, 0, depth, feed.shape[-1])), counts


def place_contemplation(embeds: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor, n: int):
    """Left-padded prompt embeddings [B, W, D] followed, per row, by counts[b] contemplation positions (zeros:
    `layer_inputs` fills them), every row still ending at the right edge (rows that contemplated less get more
    padding on the left); returns (embeds [B, W + n, D], mask, at [B, n], valid [B, n]): row b's contemplation i
    sits at at[b, i] wherever valid[b, i]."""
    rows, width = len(embeds), embeds.shape[1]
    out = embeds.new_zeros(rows, width + n, embeds.shape[-1])
    out_mask = mask.new_zeros(rows, width + n)
    at = torch.zeros(rows, n, dtype=torch.long, device=embeds.device)
    valid = torch.zeros(rows, n, device=embeds.device)
    for b in range(rows):
        c = int(counts[b])
        shift = n - c
        out[b, shift : shift + width], out_mask[b, shift : shift + width] = embeds[b], mask[b]
        out_mask[b, shift + width :] = 1
        at[b, :c], valid[b, :c] = torch.arange(shift + width, width + n), 1
    return out, out_mask, at, valid


@contextmanager
def layer_inputs(model, at: torch.Tensor, valid: torch.Tensor, states: torch.Tensor):
    """Within: the input of decoder layer j at row b's position at[b, i] (wherever valid[b, i]) is states[b, i, j]
    ([B, K, J, D], J <= L: the first J decoder layers; the layers above compute their own states there): the
    positions hold the contemplator's states, so the decoder attends to keys and values made from them (CCoT's
    decoder reads the contemplator's key-value cache). Only in forward passes whose sequence reaches those
    positions: generation's later steps, one new token each, pass."""
    last = int(at.max()) if at.numel() else -1

    def fill(j):
        def pre(module, args):
            if args[0].shape[1] <= last:
                return None
            return (put_vectors(args[0], at, valid, states[:, :, j]), *args[1:])
        return pre

    filled = decoder_layers(model)[: states.shape[2]]
    hooks = [block.register_forward_pre_hook(fill(j)) for j, block in enumerate(filled)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


class EndHead(torch.nn.Module):
    """CCoT's END head: stop contemplating where net((h - mean) / std) > 0, h the last layer's state at the
    position; net is a linear map (`hidden` 0) or one hidden layer of `hidden` units (GELU)."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        linear = torch.nn.Linear
        self.net = torch.nn.Sequential(linear(dim, hidden), torch.nn.GELU(), linear(hidden, 1)) if hidden else \
            torch.nn.Sequential(linear(dim, 1))

    def logits(self, finals: torch.Tensor) -> torch.Tensor:
        return self.net((finals.float() - self.mean) / self.std).squeeze(-1)

    @torch.no_grad()
    def forward(self, finals: torch.Tensor) -> torch.Tensor:
        return self.logits(finals.to(self.mean.device)).to(finals.device) > 0

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "EndHead":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        hidden = tensors["net.2.weight"].shape[1] if "net.2.weight" in tensors else 0
        head = cls(len(tensors["mean"]), hidden)
        head.load_state_dict(tensors)
        return head.eval()


class CoconutThinker:
    """A Coconut model's thinking: `<|start-latent|>`, its thoughts and `<|end-latent|>` appended to the prompt
    ids (`suffix`), the thoughts filled in as embeddings."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.suffix = [spec["start"], *[spec["latent"]] * spec["thoughts"], spec["end"]]

    def prompt(self, model, input_ids: torch.Tensor, mask: torch.Tensor):
        embeds = fill_latents(model, input_ids, mask, self.spec["latent"], self.spec["thoughts"])
        return embeds, mask, [self.spec["thoughts"]] * len(input_ids), nullcontext()


class CCoTThinker:
    """A CCoT model's thinking: the contemplator contemplates after the prompt until its END head says stop or
    `cap` positions; the decoder then answers after the prompt and as many positions, whose input at every layer is
    the contemplator's there (`layer_inputs`)."""

    suffix: list[int] = []

    def __init__(self, model_dir: str | Path, spec: dict, dtype=torch.float32, device="cpu"):
        from transformers import AutoModelForCausalLM

        self.layer, self.cap = spec["layer"], spec["cap"]
        self.filled = spec.get("filled_layers")  # None: every decoder layer reads the contemplator's states
        self.phi = AutoModelForCausalLM.from_pretrained(Path(model_dir) / CONTEMPLATOR, dtype=dtype).to(device).eval()
        self.end = EndHead.load(Path(model_dir) / END_HEAD).to(device)

    def prompt(self, model, input_ids: torch.Tensor, mask: torch.Tensor):
        states, counts = contemplate(self.phi, input_ids, mask, self.layer, self.cap, self.end)
        embeds, mask, at, valid = place_contemplation(model.get_input_embeddings()(input_ids), mask, counts,
                                                      states.shape[1])
        return embeds, mask, counts.tolist(), layer_inputs(model, at, valid, states[:, :, : self.filled or -1])


def load_thinker(model_dir: str | Path, dtype=torch.float32, device="cpu"):
    """How a model thinks before it answers, for the hf engine: a CoconutThinker, a CCoTThinker, or None (in
    tokens). Each has `suffix` (token ids put after the prompt) and `prompt(model, input_ids, mask) -> (inputs
    embeds, mask, latent positions per row, a context to generate in)` on left-padded prompts, ready for
    `generate(inputs_embeds=...)` (the context puts what the embeddings cannot carry: CCoT's layer inputs)."""
    if spec := read_spec(model_dir):
        return CoconutThinker(spec)
    if spec := read_ccot_spec(model_dir):
        return CCoTThinker(model_dir, spec, dtype, device)
    return None
