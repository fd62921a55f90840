"""Stage `cot_valve`: CoT-Valve (Ma et al. 2025), a LoRA delta whose scale sets the length of the chains.

Plain SFT of a LoRA adapter on short chains of the start model's problems (a dataset, the gold terse form, or a
`sample` dataset's shortest correct): theta + alpha * delta is the start model at alpha 0, the trained short one
at 1, and extrapolates shorter beyond 1. The saved model is merged at `alpha`, its adapter kept in
model/adapter/ naming the base, so eval (`lora_scale`) and `sample` (`lora_scales`, MixChain) take any alpha.

On a MixChain dataset (a `sample` stage with `lora_scales`; `data: {from_stage: ..., select: all_correct}`):
- CoT-Valve++ (`beta: length`): the LoRA branch scaled per sample in the training forward by
  beta = 1 - (m - m_min) / (m_max - m_min), m its length in tokens among its question's solutions (1 when they
  are all as long), so the shortest solution trains the whole delta and the longest none of it;
- progressive (`progressive: true`, CoT-Valve+P): one epoch on each chain level (the scale it was sampled at;
  the gold solution is a level of its own), longest level first.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import Field, model_validator

from rlcomp.data import load_examples
from rlcomp.report import console
from rlcomp.schema import LearnerConfig, LoraConfig
from rlcomp.stages import sft


class Config(sft.Config):
    type: Literal["cot_valve"] = "cot_valve"
    learner: LearnerConfig = LearnerConfig(lora=LoraConfig())
    alpha: float = Field(1.0, ge=0)  # the saved model: theta + alpha * delta
    beta: Literal["none", "length"] = "none"  # CoT-Valve++: per-sample LoRA scale from the solution's length
    progressive: bool = False  # CoT-Valve+P: an epoch per MixChain level, longest first (replaces `epochs`)

    @model_validator(mode="after")
    def _valve(self):
        if self.learner.lora is None:
            raise ValueError("cot_valve trains a LoRA delta: set learner.lora (e.g. {r: 16, alpha: 32})")
        if self.beta == "length":
            if self.batching == "pack":
                raise ValueError("beta: length scales each sample's LoRA branch: batching bucket or pad, not pack")
            if self.learner.gradient_checkpointing:
                raise ValueError("beta: length cannot recompute activations (gradient_checkpointing): the "
                                 "per-sample scale is applied by forward hooks that a recomputation would miss")
        if (self.beta == "length" or self.progressive) and not self.data.from_stage:
            raise ValueError("beta: length and progressive need a MixChain dataset: data.from_stage naming a "
                             "sample stage with lora_scales")
        return self


def resources(cfg: Config) -> dict[str, float]:
    return sft.resources(cfg)


def length_betas(ids: list[str], lengths: list[int]) -> list[float]:
    """CoT-Valve++'s beta per solution: 1 - (m - m_min) / (m_max - m_min) within its question's solutions."""
    by_id: dict[str, list[int]] = defaultdict(list)
    for i, m in zip(ids, lengths):
        by_id[i].append(m)
    out = []
    for i, m in zip(ids, lengths):
        lo, hi = min(by_id[i]), max(by_id[i])
        out.append(1.0 if hi == lo else 1 - (m - lo) / (hi - lo))
    return out


def levels_longest_first(examples: list, lengths: list[int]) -> list[list[int]]:
    """Example indices grouped by the LoRA scale their solution was sampled at (gold: a level of its own),
    the level with the longest mean length first."""
    levels: dict = defaultdict(list)
    for i, e in enumerate(examples):
        levels[e.extra.get("lora_scale")].append(i)
    mean = {k: sum(lengths[i] for i in v) / len(v) for k, v in levels.items()}
    order = sorted(levels, key=lambda k: -mean[k])
    console.print("cot_valve: progressive levels (LoRA scale: examples, mean tokens): " +
                  ", ".join(f"{k}: {len(levels[k])}, {mean[k]:.1f}" for k in order))
    return [levels[k] for k in order]


def run(cfg: Config, run, model: str | None) -> str:
    from rlcomp.models import load_tokenizer

    if model is None:
        raise ValueError(f"stage {run.stage}: no input model")
    examples = load_examples(run.data(cfg.data), cfg.prompt)
    lengths = [len(ids) for ids in load_tokenizer(model)([e.response for e in examples],
                                                          add_special_tokens=False)["input_ids"]]
    fields = {"lora_scale": length_betas([e.id for e in examples], lengths)} if cfg.beta == "length" else None
    phases = levels_longest_first(examples, lengths) if cfg.progressive else None
    return sft.train(cfg, run, model, examples, loss="sft_lora_scaled" if fields else "sft", fields=fields,
                     phases=phases, lora_scale=cfg.alpha)
