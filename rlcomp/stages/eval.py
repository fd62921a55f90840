"""Stage `eval`: generate for a held-out set with rollout workers, score with the dataset's verifier, and
report accuracy (pass@1 averaged over the `n` samples per problem), pass@k, mean response tokens and n,
overall and per level when the problems carry one (`extra[level_key]`)."""
from __future__ import annotations

from math import comb
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlcomp.data import TASKS, DataSpec, load_examples
from rlcomp.prompts import apply_condition, condition_prefix, thinking_split
from rlcomp.report import console, progress, write_jsonl
from rlcomp.schema import StageConfig, check_engine, workers_resources


class Config(StageConfig):
    type: Literal["eval"] = "eval"
    data: DataSpec
    max_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, gt=0)  # samples per prompt (accuracy is averaged over them)
    # Sampling is seeded per evaluation, so that what the workers generated before (a comparison's other rows, on
    # the same workers) does not change what this one draws.
    seed: int = Field(0, ge=0)
    workers: int = Field(1, gt=0)  # rollout workers, one CPU (or GPU) each
    gpus_per_worker: float = Field(0, ge=0)
    batch_size: int = Field(128, gt=0)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))
    verifier: str | None = None  # default: the dataset's (a synthetic task's checker, gsm8k, math)
    pass_k: list[int] = []  # report pass@k for these k (each at most n), from the n samples per problem
    level_key: str = "level"  # the problems' column that names their difficulty level, for per-level results
    # For a model trained under condition prefixes (C3oT's long and short): which one to ask it with; default:
    # the model's own default (rlcomp/prompts.py, condition_prefix); models without conditions take none.
    condition: str | None = None
    # For a model trained with a LoRA adapter (CoT-Valve): evaluate theta + lora_scale * delta (pushed into the
    # running engines); unset: the model as saved.
    lora_scale: float | None = None

    @model_validator(mode="after")
    def _k_fits(self):
        if bad := [k for k in self.pass_k if not 1 <= k <= self.n]:
            raise ValueError(f"pass_k {bad}: each k must be between 1 and n ({self.n} samples per problem)")
        return self


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which `correct` are right (Chen et al. 2021)."""
    return 1.0 if n - correct < k else 1.0 - comb(n - correct, k) / comb(n, k)


def per_level(levels: list, groups, scores: list[list[float]], pass_k: list[int]) -> dict[str, dict]:
    """`summarize` for the problems of each level, levels in sorted order."""
    out = {}
    for level in sorted(set(levels), key=str):
        chosen = [i for i, x in enumerate(levels) if x == level]
        out[str(level)] = summarize([groups[i] for i in chosen], [scores[i] for i in chosen], pass_k)
    return out


def summarize(groups, scores: list[list[float]], pass_k: list[int]) -> dict:
    """accuracy (mean over all samples), pass@k (mean over problems), mean response tokens, n."""
    samples = [s for g in groups for s in g]
    flat = [x for g in scores for x in g]
    result = {"n": len(groups), "samples": len(samples), "accuracy": sum(flat) / len(flat),
              "mean_response_tokens": sum(s.length for s in samples) / len(samples)}
    for k in pass_k:
        result[f"pass@{k}"] = sum(pass_at_k(len(g), sum(x >= 0.5 for x in g), k) for g in scores) / len(scores)
    return result


def correctness(verifier: str, responses: list[str], golds: list[str]) -> list[float]:
    if verifier in TASKS:  # the synthetic checkers are exact string matches: no need for a process pool
        task = TASKS[verifier]
        return [float(task.check(r, g)) for r, g in zip(responses, golds)]
    from rlcomp.rewards import verify

    return verify(verifier, responses, golds)


def evaluate(cfg: Config, rollout, prefix: str | None = None) -> tuple[dict, list]:
    """Generate for cfg.data with the given rollout workers (a RolloutGroup) and score the responses; `prefix`
    wraps every question (a condition the model was trained under)."""
    from rlcomp.rollout import SamplingParams

    examples = apply_condition(load_examples(cfg.data, cfg.prompt), prefix)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            batch_size=cfg.batch_size, seed=cfg.seed)
    with progress(f"eval {cfg.data.dataset}", len(examples)) as bar:
        groups = rollout.generate(examples, params, chunk=cfg.batch_size, on_done=bar.advance)
    samples = [s for g in groups for s in g]
    verifier = cfg.verifier or cfg.data.default_verifier()
    flat = iter(correctness(verifier, [s.response for s in samples], [s.answer for s in samples]))
    scores = [[next(flat) for _ in g] for g in groups]
    result = {
        "dataset": cfg.data.dataset,
        "split": cfg.data.split,
        **summarize(groups, scores, cfg.pass_k),
        "finished_fraction": sum(s.finished for s in samples) / len(samples),
        "temperature": cfg.temperature,
        **thinking_split(samples),
    }
    levels = [e.extra.get(cfg.level_key) for e in examples]
    if any(level is not None for level in levels):
        result["by_level"] = per_level(levels, groups, scores, cfg.pass_k)
    return result, samples


def resources(cfg: Config) -> dict[str, float]:
    return workers_resources(cfg.workers, 1, cfg.gpus_per_worker)


def run(cfg: Config, run, model: str | None) -> None:
    from rlcomp.rollout import RolloutGroup

    if model is None:
        raise ValueError(f"stage {run.stage}: no model to evaluate")
    prefix = condition_prefix(model, cfg.condition)
    # Consecutive eval stages share their rollout workers (SharedRollout), models and LoRA scales switched in them.
    settings = (cfg.engine, cfg.workers, cfg.gpus_per_worker, cfg.prompt and cfg.prompt.model_dump_json())
    rollout = run.rollouts.get(model, settings, lambda: RolloutGroup(model, cfg.engine, cfg.workers,
                                                                     cfg.gpus_per_worker, prompt=cfg.prompt))
    rollout.use_lora_scale(cfg.lora_scale)
    run.record_precision(f"{rollout.engine} engine", rollout.precision)
    result, samples = evaluate(cfg, rollout, prefix)
    result["model"] = model
    if cfg.lora_scale is not None:
        result["lora_scale"] = cfg.lora_scale
    if prefix is not None:
        result["condition"] = prefix
    run.record_eval(result)
    write_jsonl(run.stage_dir() / "samples.jsonl",
                ({"prompt": s.prompt, "response": s.response, "answer": s.answer, "tokens": s.length,
                  **({"thinking_tokens": s.thinking_tokens} if s.thinking_tokens is not None else {})}
                 for s in samples))
    split = (f" ({result['mean_thinking_tokens']:.1f} thinking, {result['mean_answer_tokens']:.1f} answer)"
             if "mean_thinking_tokens" in result else "")
    passes = "".join(f", pass@{k} {result[f'pass@{k}']:.3f}" for k in cfg.pass_k)
    console.print(f"eval {cfg.data.dataset}: accuracy {result['accuracy']:.3f}{passes} on n={result['n']}, "
                  f"mean response tokens {result['mean_response_tokens']:.1f}{split}")
    for level, row in result.get("by_level", {}).items():
        console.print(f"  {cfg.level_key} {level}: accuracy {row['accuracy']:.3f} on n={row['n']}, "
                      f"mean response tokens {row['mean_response_tokens']:.1f}")
