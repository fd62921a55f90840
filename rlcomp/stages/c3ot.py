"""Stage `c3ot`: C3oT (Kang et al., AAAI'25), conditioned training on long and compressed chains.

Every question appears twice, shuffled: after the long condition prefix with its long chain, and after the short
prefix with the chain a compressor made of it. The model learns both; asked with the short prefix it answers
briefly. The compressor is the recipe's choice:
- `terse`: the synthetic task's own terse form of each problem (its needed steps only);
- `path/to/file.py:function` or `module:function`: `function(example) -> str | None`, the short chain (None drops
  the question);
- `{model: ..., instruction: "...{response}..."}`: a model asked to compress each chain (greedy); a chain
  whose answer the dataset's verifier rejects is dropped, as is the question.
The prefixes wrap the question as the stage's prompt spec words it. The saved model records both as its
conditions, short by default (rlcomp/prompts.py): eval, sample and comparisons ask it the short way; an eval
stage's `condition: long` asks the long way (the compression rate rho = (L - L_short) / L compares the two).
"""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, field_validator

from rlcomp.data import load_examples
from rlcomp.prompts import apply_condition, check_question_template, save_conditions
from rlcomp.report import console, write_json, write_jsonl
from rlcomp.schema import Strict, check_engine, check_model_path, workers_resources
from rlcomp.stages import sft

# The paper's prefixes (sec. 3.2), as instructions around the question.
LONG = "Answer and provide a detailed thought process: {question}"
SHORT = "Answer and provide as brief a thought process as possible: {question}"


class ModelCompressor(Strict):
    model: str  # a model directory or hub id
    instruction: str = "Rewrite this reasoning as briefly as possible, keeping the key steps:\n{response}\n"
    max_tokens: int = Field(512, gt=0)
    workers: int = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))
    _check_model = field_validator("model")(classmethod(lambda cls, v: check_model_path(v)))
    _check_instruction = field_validator("instruction")(
        classmethod(lambda cls, v: check_question_template(v, "instruction", key="response")))


class Config(sft.Config):
    type: Literal["c3ot"] = "c3ot"
    compressor: str | ModelCompressor = "terse"
    long_prefix: str = LONG
    short_prefix: str = SHORT

    _check_prefixes = field_validator("long_prefix", "short_prefix")(
        classmethod(lambda cls, v, info: check_question_template(v, info.field_name)))


def resources(cfg: Config) -> dict[str, float]:
    """The compressor's rollout workers finish before the learner starts: the larger of the two."""
    learner = sft.resources(cfg)
    if not isinstance(cfg.compressor, ModelCompressor):
        return learner
    c = cfg.compressor
    compressor = workers_resources(c.workers, 1, c.gpus_per_worker)
    return {k: max(learner.get(k, 0), compressor.get(k, 0)) for k in learner | compressor}


def compress(cfg: Config, examples: list) -> list[str | None]:
    """The short chain of each example's long one (None: the compressor gave none)."""
    if isinstance(cfg.compressor, ModelCompressor):
        return compress_with_model(cfg.compressor, examples)
    if cfg.compressor == "terse":
        if any("terse" not in e.extra for e in examples):
            raise ValueError("compressor terse: the examples carry no terse form (only the synthetic tasks have "
                             "one); name a function (`file.py:function`) or a model ({model: ..., instruction: ...})")
        return [e.extra["terse"] for e in examples]
    from rlcomp.rewards.registry import load_function

    fn = load_function(cfg.compressor)
    return [fn(e) for e in examples]


def compress_with_model(spec: ModelCompressor, examples: list) -> list[str | None]:
    from rlcomp.rollout import RolloutGroup, SamplingParams
    from rlcomp.sample import Example
    from rlcomp.stages.eval import correctness

    asks = [Example(prompt=spec.instruction.format(response=e.response), answer=e.answer, id=e.id,
                    data_source=e.data_source) for e in examples]
    rollout = RolloutGroup(spec.model, spec.engine, spec.workers, spec.gpus_per_worker)
    try:
        groups = rollout.generate(asks, SamplingParams(n=1, temperature=0.0, max_tokens=spec.max_tokens))
    finally:
        rollout.shutdown()
    short = [g[0].response for g in groups]
    verdicts = correctness(examples[0].data_source, short, [e.answer for e in examples]) if examples else []
    return [s if ok >= 0.5 else None for s, ok in zip(short, verdicts)]


def conditioned(examples: list, short: list[str | None], cfg: Config, rng: random.Random) -> list:
    """Each question twice (long prefix + long chain, short prefix + short chain), shuffled; questions without
    a short chain are left out (both forms, so the two conditions stay 1:1 as in the paper)."""
    from dataclasses import replace

    kept = [(e, s) for e, s in zip(examples, short) if s]
    long = apply_condition([replace(e, extra={**e.extra, "c3ot": "long"}) for e, _ in kept], cfg.long_prefix)
    brief = apply_condition([replace(e, response=s, extra={**e.extra, "c3ot": "short"}) for e, s in kept],
                            cfg.short_prefix)
    out = long + brief
    rng.shuffle(out)
    return out


def run(cfg: Config, run, model: str | None) -> str:
    if model is None:
        raise ValueError(f"stage {run.stage}: no input model")
    examples = [e for e in load_examples(run.data(cfg.data), cfg.prompt) if e.response]
    if not examples:
        raise ValueError(f"stage {run.stage}: the data has no responses (long chains) to condition on")
    short = compress(cfg, examples)
    data = conditioned(examples, short, cfg, random.Random(run.seed))
    if not data:
        raise ValueError(f"stage {run.stage}: the compressor kept no chain of {len(examples)}")
    long_tokens = sum(len(e.response) for e in data if e.extra["c3ot"] == "long")
    short_tokens = sum(len(e.response) for e in data if e.extra["c3ot"] == "short")
    stats = {"questions": len(examples), "kept": len(data) // 2, "compression_chars": 1 - short_tokens / long_tokens}
    write_json(run.stage_dir() / "data_summary.json", stats)
    write_jsonl(run.stage_dir() / "data.jsonl", ({"prompt": e.prompt, "response": e.response, "answer": e.answer,
                                                  "condition": e.extra["c3ot"]} for e in data))
    console.print(f"c3ot: {stats['kept']} of {len(examples)} questions kept, short chains "
                  f"{stats['compression_chars']:.0%} shorter (characters)")
    output = sft.train(cfg, run, model, data)
    save_conditions(output, {"long": cfg.long_prefix, "short": cfg.short_prefix}, default="short")
    return output
