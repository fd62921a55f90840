"""Turning tokenized sequences into training micro-batches: padded, length-bucketed, or packed.

A sequence is (token ids, number of prompt tokens); loss is taken on the completion only. Every
micro-batch carries `targets` (next-token ids, -100 where no loss) and the step's global target count.
"""
from __future__ import annotations

import random

import torch

from rlcomp.losses import IGNORE
from rlcomp.prompts import PromptRenderer, PromptSpec

Sequence = tuple[list[int], int]  # (ids, prompt_length)


def tokenize_examples(tokenizer, examples, max_length: int, prompt: PromptSpec | None = None) -> list[Sequence]:
    """Prompt + response for each example, truncated to max_length: with a chat template, the conversation as
    it renders (the response is the assistant turn, its end-of-turn token included); else bare text + EOS."""
    renderer = PromptRenderer(tokenizer, prompt)
    if renderer.templated:
        pairs = [renderer.sft_pair(e.prompt, e.response) for e in examples]
        return [((p + r)[:max_length], len(p)) for p, r in pairs]
    prompts = tokenizer([renderer.text(e.prompt) for e in examples], add_special_tokens=False)["input_ids"]
    responses = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    return [((p + r + [tokenizer.eos_token_id])[:max_length], len(p)) for p, r in zip(prompts, responses)]


def _targets(ids: list[int], prompt_len: int) -> list[int]:
    # targets[t] is the token after position t; prompt tokens (and the final position) predict nothing.
    return [IGNORE if t + 1 < prompt_len else tok for t, tok in enumerate(ids[1:])] + [IGNORE]


def collate_padded(seqs: list[Sequence], pad_id: int) -> dict:
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id)
    targets = torch.full((len(seqs), width), IGNORE)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(seqs):  # right padding: positions stay 0..len-1
        input_ids[row, : len(ids)] = torch.tensor(ids)
        targets[row, : len(ids)] = torch.tensor(_targets(ids, prompt_len))
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "targets": targets}


def collate_packed(seqs: list[Sequence]) -> dict:
    """All sequences in one row; position ids restart at each sequence, which transformers turns into a
    block-diagonal causal mask (flash-attention varlen on GPU), so sequences do not attend to each other."""
    ids = [tok for s, _ in seqs for tok in s]
    targets = [t for s, p in seqs for t in _targets(s, p)]
    positions = [i for s, _ in seqs for i in range(len(s))]
    as_row = lambda xs: torch.tensor(xs).unsqueeze(0)  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(positions), "targets": as_row(targets)}


def step_batches(items: list, batch_size: int, mode: str, rng: random.Random, length=lambda s: len(s[0])) -> list[list]:
    """One epoch of optimizer steps, each `batch_size` items (sequences, or indices with their `length`).
    `bucket` groups items of similar length (sorted within windows of 50 steps, then the steps shuffled); `pad`
    and `pack` take them in random order."""
    order = list(items)
    rng.shuffle(order)
    if mode == "bucket":
        window = batch_size * 50
        order = [s for i in range(0, len(order), window) for s in sorted(order[i : i + window], key=length)]
    steps = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    if mode == "bucket":
        rng.shuffle(steps)
    return steps


def micro_batches(step: list[Sequence], n: int, mode: str, pad_id: int,
                  per_sequence: dict[str, list[float]] | None = None) -> list[dict]:
    """Split one step into n micro-batches (n >= the number of learner ranks). `per_sequence[key][i]` is a value
    for step[i] (a per-sample LoRA scale, ...), put in its micro-batch as a tensor with one entry per row."""
    if per_sequence and mode == "pack":
        raise ValueError(f"per-sequence fields ({', '.join(per_sequence)}) need one sequence per row: "
                         "batching bucket or pad, not pack")
    parts = [list(range(len(step)))[i::n] for i in range(n)]
    total_targets = sum(len(ids) - p for ids, p in step)  # each sequence predicts len - prompt_len tokens
    batches = []
    for part in filter(None, parts):
        seqs = [step[i] for i in part]
        batch = collate_packed(seqs) if mode == "pack" else collate_padded(seqs, pad_id)
        for key, values in (per_sequence or {}).items():
            batch[key] = torch.tensor([values[i] for i in part], dtype=torch.float32)
        batch["step_target_tokens"] = total_targets
        batches.append(batch)
    return batches


def sample_sequences(samples) -> list[Sequence]:
    return [(s.prompt_ids + s.response_ids, len(s.prompt_ids)) for s in samples]


def rl_micro_batches(samples, n: int, pad_id: int, per_token: dict[str, list], **scalars) -> list[dict]:
    """Policy/critic micro-batches from samples. `per_token[key][i]` is a list of floats for sample i's response
    tokens (or one float, broadcast over them); each lands where the logits predict those tokens."""
    order = list(range(len(samples)))
    parts = [order[i::n] for i in range(n)]
    batches = []
    for part in parts:
        seqs = sample_sequences([samples[i] for i in part])
        batch = collate_padded(seqs, pad_id)
        width = batch["input_ids"].shape[1]
        for key, rows in per_token.items():
            values = torch.zeros(len(part), width)
            for row, i in enumerate(part):
                start, length = len(samples[i].prompt_ids) - 1, len(samples[i].response_ids)
                values[row, start : start + length] = torch.as_tensor(rows[i], dtype=torch.float32)
            batch[key] = values
        batch.update(scalars)
        batch["sample_index"] = torch.tensor(part)
        batches.append(batch)
    return batches


def response_values(batches: list[dict], outputs: list[torch.Tensor], samples) -> list[list[float]]:
    """The inverse of rl_micro_batches for one [B, T] output per batch: per-sample lists over response tokens."""
    result: list = [None] * len(samples)
    for batch, out in zip(batches, outputs):
        for row, i in enumerate(batch["sample_index"].tolist()):
            start, length = len(samples[i].prompt_ids) - 1, len(samples[i].response_ids)
            result[i] = out[row, start : start + length].tolist()
    return result
