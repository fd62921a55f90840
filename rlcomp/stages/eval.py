"""Stage `eval`: generate for a held-out set with rollout workers, score with the dataset's verifier, and
report accuracy, mean response tokens and n."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rlcomp.config import check_engine, StageConfig
from rlcomp.data import TASKS, DataSpec, load_examples
from rlcomp.prompts import thinking_split
from rlcomp.report import console, progress, write_jsonl
from rlcomp.rollout import RolloutGroup, SamplingParams


class Config(StageConfig):
    type: Literal["eval"] = "eval"
    data: DataSpec
    max_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, gt=0)  # samples per prompt (accuracy is averaged over them)
    workers: int = Field(1, gt=0)  # rollout workers, one CPU (or GPU) each
    gpus_per_worker: float = Field(0, ge=0)
    batch_size: int = Field(128, gt=0)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))
    verifier: str | None = None  # default: the dataset's (a synthetic task's checker, gsm8k, math)


def correctness(verifier: str, responses: list[str], golds: list[str]) -> list[float]:
    if verifier in TASKS:  # the synthetic checkers are exact string matches: no need for a process pool
        task = TASKS[verifier]
        return [float(task.check(r, g)) for r, g in zip(responses, golds)]
    from rlcomp.rewards import verify

    return verify(verifier, responses, golds)


def evaluate(cfg: Config, rollout: RolloutGroup) -> tuple[dict, list]:
    """Generate for cfg.data with the given rollout workers and score the responses."""
    examples = load_examples(cfg.data, cfg.prompt)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            batch_size=cfg.batch_size)
    with progress(f"eval {cfg.data.dataset}", len(examples)) as bar:
        groups = rollout.generate(examples, params, chunk=cfg.batch_size, on_done=bar.advance)
    samples = [s for g in groups for s in g]
    verifier = cfg.verifier or cfg.data.default_verifier()
    scores = correctness(verifier, [s.response for s in samples], [s.answer for s in samples])
    result = {
        "dataset": cfg.data.dataset,
        "split": cfg.data.split,
        "n": len(examples),
        "samples": len(samples),
        "accuracy": sum(scores) / len(samples),
        "mean_response_tokens": sum(s.length for s in samples) / len(samples),
        "finished_fraction": sum(s.finished for s in samples) / len(samples),
        "temperature": cfg.temperature,
        **thinking_split(samples),
    }
    return result, samples


def run(cfg: Config, run, model: str | None) -> None:
    if model is None:
        raise ValueError(f"stage {run.stage}: no model to evaluate")
    rollout = RolloutGroup(model, cfg.engine, cfg.workers, cfg.gpus_per_worker, prompt=cfg.prompt)
    run.record_precision(f"{rollout.engine} engine", rollout.precision)
    try:
        result, samples = evaluate(cfg, rollout)
    finally:
        rollout.shutdown()
    result["model"] = model
    run.record_eval(result)
    write_jsonl(run.stage_dir() / "samples.jsonl",
                ({"prompt": s.prompt, "response": s.response, "answer": s.answer, "tokens": s.length,
                  **({"thinking_tokens": s.thinking_tokens} if s.thinking_tokens is not None else {})}
                 for s in samples))
    split = (f" ({result['mean_thinking_tokens']:.1f} thinking, {result['mean_answer_tokens']:.1f} answer)"
             if "mean_thinking_tokens" in result else "")
    console.print(f"eval {cfg.data.dataset}: accuracy {result['accuracy']:.3f} on n={result['n']}, "
                  f"mean response tokens {result['mean_response_tokens']:.1f}{split}")
