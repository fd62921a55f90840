"""Stage `sample`: n responses per prompt from the stage's input model on the rollout workers, scored by the
reward service, written as a dataset: `samples.jsonl` in the stage directory, one row per response.

Later stages read it with `data: {from_stage: <this stage>, select: shortest_correct | all_correct |
random_correct | all}` (Kimi k1.5's shortest rejection sampling, DPO pairs, ...); users read it as JSON lines:
id, prompt, response, answer, tokens, correct, reward, rewards (every part), finished, level, sample (its index
among the prompt's n; -1 for the gold response), lora_scale, data_source and extra (the dataset's columns). The
prompts are generated in chunks, each written to chunks/ when done: an interrupted run resumes after the last
finished chunk.

With `lora_scales` it is CoT-Valve's MixChain: a LoRA-trained model sampled at several scales of its delta
(greedy by default in the recipes), so each question gets solutions of decreasing length.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rlcomp.data import DataSpec, load_examples
from rlcomp.prompts import apply_condition, condition_prefix
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
    # MixChain (CoT-Valve): sample the input model's LoRA delta at each of these scales (theta + scale * delta;
    # the model must have been trained with learner.lora), every row recording its `lora_scale`.
    lora_scales: list[float] | None = None


def resources(cfg: Config) -> dict[str, float]:
    return add_resources([workers_resources(cfg.workers, 1, cfg.gpus_per_worker), {"CPU": cfg.reward_cpus}])


def gold_sample(example, rollout):
    """The example's gold response as a Sample, tokenized as the model would have written it."""
    from rlcomp.sample import Sample

    ids = rollout.renderer.tokenizer(example.response, add_special_tokens=False)["input_ids"]
    return Sample(prompt=example.prompt, response=example.response, answer=example.answer,
                  prompt_ids=rollout.renderer.ids(example.prompt), response_ids=ids, data_source=example.data_source,
                  extra={**example.extra, "gold": True})


def rows(examples, groups, level_key: str, scale: float | None = None) -> list[dict]:
    """One JSON row per sample (groups[i] answers examples[i]); `correct` is the verifier's verdict; `lora_scale`
    the scale the sampling model's LoRA delta had (MixChain; None for the gold response and plain models)."""
    out = []
    for e, group in zip(examples, groups):
        for j, s in enumerate(group):
            gold = bool(s.extra.get("gold"))
            alpha = None if gold else scale
            out.append({"id": e.id, "prompt": s.prompt, "response": s.response, "answer": s.answer, "tokens": s.length,
                        "correct": s.rewards.get("accuracy", 0.0) >= 0.5, "reward": s.reward, "rewards": s.rewards,
                        "finished": s.finished, "level": e.extra.get(level_key), "sample": -1 if gold else j,
                        "lora_scale": alpha, "data_source": s.data_source,
                        "extra": {**e.extra, "lora_scale": alpha} if scale is not None else e.extra})
    return out


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

    from rlcomp.rewards import start_reward_service
    from rlcomp.rollout import RolloutGroup

    if model is None:
        raise ValueError(f"stage {run.stage}: no model to sample from")
    # A model trained under condition prefixes (C3oT) is asked under its default one.
    examples = apply_condition(load_examples(run.data(cfg.data), cfg.prompt), condition_prefix(model))
    for i, e in enumerate(examples):  # rows of one prompt are told apart by its id
        e.id = e.id or f"{cfg.data.dataset or 'prompt'}-{i}"
    chunks = run.stage_dir() / "chunks"
    chunks.mkdir(exist_ok=True)
    starts = range(0, len(examples), cfg.chunk)
    rewards, rollout, files = None, None, []
    try:
        for k, scale in enumerate(cfg.lora_scales or [None]):
            names = [chunks / (f"{s:08d}.jsonl" if scale is None else f"scale{scale:g}-{s:08d}.jsonl") for s in starts]
            files += names
            todo = [(start, name) for start, name in zip(starts, names) if not name.is_file()]
            if len(todo) < len(starts):
                console.print(f"sample: {len(starts) - len(todo)} of {len(starts)} chunks"
                              f"{'' if scale is None else f' at LoRA scale {scale:g}'} done in an earlier run, kept")
            if not todo:
                continue
            rewards = rewards or start_reward_service(cfg.reward, num_cpus=cfg.reward_cpus)
            if rollout is None:
                rollout = RolloutGroup(model, cfg.engine, cfg.workers, cfg.gpus_per_worker, seed=run.seed,
                                       prompt=cfg.prompt)
                run.record_precision(f"{rollout.engine} engine", rollout.precision)
            rollout.use_lora_scale(scale)  # MixChain: theta + scale * delta, pushed into the running engines
            sample_chunks(cfg, run, rollout, examples, todo, rewards, gold=cfg.include_gold and k == 0, scale=scale)
    finally:
        if rollout is not None:
            rollout.shutdown()
    every = [json.loads(line) for name in files for line in name.read_text().splitlines()]
    write_jsonl(run.stage_dir() / "samples.jsonl", every)
    summary = summarize(every)
    if cfg.lora_scales:
        summary["by_lora_scale"] = {str(a): summarize([r for r in every if r["lora_scale"] == a])
                                    for a in [None, *cfg.lora_scales] if any(r["lora_scale"] == a for r in every)}
        for a, part in summary["by_lora_scale"].items():
            console.print(f"  LoRA scale {a}: accuracy {part['accuracy']:.3f}, mean tokens {part['mean_tokens']:.1f}")
    write_json(run.stage_dir() / "summary.json", summary)
    console.print(f"sample: {summary['samples']} samples of {summary['prompts']} prompts, accuracy "
                  f"{summary['accuracy']:.3f}, mean tokens {summary['mean_tokens']:.1f} (shortest correct per prompt "
                  f"{summary['mean_shortest_correct_tokens']:.1f}); {run.stage_dir() / 'samples.jsonl'}")


def sample_chunks(cfg: Config, run, rollout, examples: list, todo: list, rewards, gold: bool,
                  scale: float | None) -> None:
    """Generate, score and write each (start, file) chunk of `todo` with the rollout group."""
    import ray

    from rlcomp.rollout import SamplingParams

    label = f"sample {run.stage}" + ("" if scale is None else f" (LoRA scale {scale:g})")
    with progress(label, sum(len(examples[s : s + cfg.chunk]) for s, _ in todo)) as bar:
        for start, name in todo:
            params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_tokens=cfg.max_tokens, seed=run.seed + start)
            part = examples[start : start + cfg.chunk]
            groups = rollout.generate(part, params)
            if gold:
                groups = [g + [gold_sample(e, rollout)] if e.response else g for e, g in zip(part, groups)]
            groups = ray.get(rewards.score.remote(groups))
            write_jsonl(name, rows(part, groups, cfg.level_key, scale))
            bar.advance(len(groups))
