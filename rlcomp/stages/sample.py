"""Stage `sample`: n responses per prompt from the stage's input model on the rollout workers, scored by the
reward service, written as a dataset: `samples.jsonl` in the stage directory, one row per response.

Later stages read it with `data: {from_stage: <this stage>, select: shortest_correct | all_correct |
random_correct | all}` (Kimi k1.5's shortest rejection sampling, DPO pairs, ...); users read it as JSON lines:
id, prompt, response, answer, tokens, correct, reward, rewards (every part), finished, level, sample (its index
among the prompt's n), data_source and extra (the dataset's columns). The prompts are generated in chunks, each
written to chunks/ when done: an interrupted run resumes after the last finished chunk.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rlcomp.data import DataSpec, load_examples
from rlcomp.report import console, progress, write_json, write_jsonl
from rlcomp.rewards.compose import RewardSpec
from rlcomp.schema import StageConfig, add_resources, check_engine, workers_resources


class Config(StageConfig):
    type: Literal["sample"] = "sample"
    data: DataSpec
    n: int = Field(8, gt=0)  # responses per prompt (Kimi: 8)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)
    reward: RewardSpec = RewardSpec()  # correctness (the dataset's verifier) by default; any parts may be added
    reward_cpus: int = Field(1, gt=0)
    workers: int = Field(1, gt=0)  # rollout workers, one CPU (or GPU) each
    gpus_per_worker: float = Field(0, ge=0)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))
    chunk: int = Field(256, gt=0)  # prompts per resumable chunk
    # Also score each prompt's gold response (the dataset's, when it has one) as one more sample, index -1:
    # not Kimi's method, but a model that rarely solves a problem then still has a correct response to learn from.
    include_gold: bool = False
    level_key: str = "level"


def resources(cfg: Config) -> dict[str, float]:
    return add_resources([workers_resources(cfg.workers, 1, cfg.gpus_per_worker), {"CPU": cfg.reward_cpus}])


def gold_sample(example, rollout):
    """The example's gold response as a Sample, tokenized as the model would have written it."""
    from rlcomp.sample import Sample

    ids = rollout.renderer.tokenizer(example.response, add_special_tokens=False)["input_ids"]
    return Sample(prompt=example.prompt, response=example.response, answer=example.answer,
                  prompt_ids=rollout.renderer.ids(example.prompt), response_ids=ids, data_source=example.data_source,
                  extra={**example.extra, "gold": True})


def rows(examples, groups, level_key: str) -> list[dict]:
    """One JSON row per sample (groups[i] answers examples[i]); `correct` is the verifier's verdict."""
    return [{"id": e.id, "prompt": s.prompt, "response": s.response, "answer": s.answer, "tokens": s.length,
             "correct": s.rewards.get("accuracy", 0.0) >= 0.5, "reward": s.reward, "rewards": s.rewards,
             "finished": s.finished, "level": e.extra.get(level_key), "sample": -1 if s.extra.get("gold") else j,
             "data_source": s.data_source, "extra": e.extra}
            for e, group in zip(examples, groups) for j, s in enumerate(group)]


def summarize(every: list[dict]) -> dict:
    shortest: dict[str, int] = {}
    for r in every:
        if r["correct"]:
            shortest[r["id"]] = min(r["tokens"], shortest.get(r["id"], r["tokens"]))
    correct = [r["tokens"] for r in every if r["correct"]]
    return {"prompts": len({r["id"] for r in every}), "samples": len(every),
            "accuracy": len(correct) / len(every), "prompts_with_a_correct_sample": len(shortest),
            "mean_tokens": sum(r["tokens"] for r in every) / len(every),
            "mean_correct_tokens": sum(correct) / max(1, len(correct)),
            "mean_shortest_correct_tokens": sum(shortest.values()) / max(1, len(shortest))}


def run(cfg: Config, run, model: str | None) -> None:
    import json

    import ray

    from rlcomp.rewards import start_reward_service
    from rlcomp.rollout import RolloutGroup, SamplingParams

    if model is None:
        raise ValueError(f"stage {run.stage}: no model to sample from")
    examples = load_examples(run.data(cfg.data), cfg.prompt)
    for i, e in enumerate(examples):  # rows of one prompt are told apart by its id
        e.id = e.id or f"{cfg.data.dataset or 'prompt'}-{i}"
    chunks = run.stage_dir() / "chunks"
    chunks.mkdir(exist_ok=True)
    starts = range(0, len(examples), cfg.chunk)
    todo = [s for s in starts if not (chunks / f"{s:08d}.jsonl").is_file()]
    if len(todo) < len(starts):
        console.print(f"sample: {len(starts) - len(todo)} of {len(starts)} chunks done in an earlier run, kept")
    if todo:
        rollout = RolloutGroup(model, cfg.engine, cfg.workers, cfg.gpus_per_worker, seed=run.seed, prompt=cfg.prompt)
        run.record_precision(f"{rollout.engine} engine", rollout.precision)
        rewards = start_reward_service(cfg.reward, num_cpus=cfg.reward_cpus)
        try:
            with progress(f"sample {run.stage}", len(examples)) as bar:
                bar.advance(len(examples) - sum(len(examples[s : s + cfg.chunk]) for s in todo))
                for start in todo:
                    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                            max_tokens=cfg.max_tokens, seed=run.seed + start)
                    part = examples[start : start + cfg.chunk]
                    groups = rollout.generate(part, params)
                    if cfg.include_gold:
                        groups = [g + [gold_sample(e, rollout)] if e.response else g for e, g in zip(part, groups)]
                    groups = ray.get(rewards.score.remote(groups))
                    write_jsonl(chunks / f"{start:08d}.jsonl", rows(part, groups, cfg.level_key))
                    bar.advance(len(groups))
        finally:
            rollout.shutdown()
    every = [json.loads(line) for s in starts for line in (chunks / f"{s:08d}.jsonl").read_text().splitlines()]
    write_jsonl(run.stage_dir() / "samples.jsonl", every)
    summary = summarize(every)
    write_json(run.stage_dir() / "summary.json", summary)
    console.print(f"sample: {summary['samples']} samples of {summary['prompts']} prompts, accuracy "
                  f"{summary['accuracy']:.3f}, mean tokens {summary['mean_tokens']:.1f} (shortest correct per prompt "
                  f"{summary['mean_shortest_correct_tokens']:.1f}); {run.stage_dir() / 'samples.jsonl'}")
