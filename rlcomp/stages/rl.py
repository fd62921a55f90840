"""Stage `rl`: online RL on one Ray cluster, for any registered algorithm (rlcomp/algorithms: grpo, ppo,
o1_pruner, ...). The stage reads the algorithm's attributes and never names one.

rollout workers -> reward service -> training signals -> FSDP2 learner step -> weight sync -> eval / checkpoint.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from typing import Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from rlcomp.algorithms import Algorithm, parse_algorithm
from rlcomp.data import DataSpec, load_examples
from rlcomp.prompts import thinking_split
from rlcomp.report import console, progress, write_jsonl
from rlcomp.rewards.compose import RewardSpec
from rlcomp.schema import (LearnerConfig, OptimConfig, StageConfig, Strict, add_resources, check_engine,
                           workers_resources)


class RolloutConfig(Strict):
    engine: Literal["auto", "hf", "vllm"] = "auto"
    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))
    workers: int = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    n: int = Field(8, gt=0)  # samples per prompt (the GRPO group)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)  # Kimi long2short: cut this sharply
    # How new weights reach the workers: auto = broadcast (NCCL) on GPU, object_store on CPU (rlcomp/weight_sync.py)
    weight_sync: Literal["auto", "object_store", "broadcast"] = "auto"
    sleep: bool = False  # vLLM on GPU: free the engine's GPU memory while the learner trains (colocated setups)

    @model_validator(mode="after")
    def _sleep_needs_gpu(self):
        if self.sleep and (not self.gpus_per_worker or self.engine == "hf"):
            raise ValueError("sleep frees GPU memory between rollouts: it needs gpus_per_worker > 0 and engine vllm")
        return self


class ReferenceConfig(Strict):
    """O1-Pruner's reference statistics: K samples per prompt from the starting model."""

    samples: int = Field(8, gt=0)  # K (paper: 16 for Marco-o1, 12 for QwQ)
    temperature: float | None = None  # default: the rollout temperature (paper: 0.5, top_p 0.8)
    top_p: float | None = None
    table: str | None = None  # reuse a saved table; otherwise one is built and saved in the stage directory


class EvalConfig(Strict):
    every: int = Field(10, gt=0)  # steps
    data: DataSpec
    max_tokens: int | None = None  # default: the rollout max_tokens


class Config(StageConfig):
    type: Literal["rl"] = "rl"
    # `grpo`, or `{type: grpo, clip_high: 0.28, ...}`: the algorithm and its loss settings (rlcomp/algorithms)
    algorithm: SerializeAsAny[Algorithm] = Field("grpo", validate_default=True)
    _algorithm = field_validator("algorithm", mode="before")(classmethod(lambda cls, v: parse_algorithm(v)))
    data: DataSpec
    reward: RewardSpec = RewardSpec()
    reward_cpus: int = Field(1, gt=0)
    rollout: RolloutConfig = RolloutConfig()
    prompts_per_step: int = Field(32, gt=0)
    max_steps: int = Field(20, gt=0)
    updates_per_step: int = Field(1, gt=0)  # optimizer steps per rollout batch (PPO epochs / mini-batches)
    micro_batches: int | None = Field(None, gt=0)  # per optimizer step; default: one per learner rank
    reference: ReferenceConfig = ReferenceConfig()
    optim: OptimConfig = OptimConfig(lr=1e-6)
    critic_optim: OptimConfig = OptimConfig(lr=1e-5)
    learner: LearnerConfig = LearnerConfig()
    # Old-policy log-probs from the learner rather than the rollout engine (needed only with updates_per_step > 1)
    recompute_logprobs: bool = True
    eval: EvalConfig | None = None
    checkpoint_every: int | None = Field(None, gt=0)
    log_every: int = Field(1, gt=0)


class StepHistory:
    """steps.jsonl: one line per step (its prompts and metrics), for analysis and for checking resumed runs."""

    def __init__(self, path):
        self.path = path

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate(self, step: int) -> None:
        """Forget steps after the checkpoint a run resumes from (they will be run again)."""
        if self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            write_jsonl(self.path, (r for r in rows if r["step"] <= step))


def prompt_order(n: int, seed: int):
    """Position p of the data stream -> example index: a fresh seeded shuffle every epoch (resumable by p)."""
    cache: dict[int, list[int]] = {}

    def index(position: int) -> int:
        epoch = position // n
        if epoch not in cache:
            cache.clear()
            cache[epoch] = random.Random(seed * 100_003 + epoch).sample(range(n), n)
        return cache[epoch][position % n]

    return index


def resources(cfg: Config) -> dict[str, float]:
    """Rollout workers, the policy (and a critic, a reference) learners and the reward service, held at once."""
    learners = 1 + cfg.algorithm.needs_critic + cfg.algorithm.needs_reference
    learner = cfg.learner
    return add_resources([workers_resources(cfg.rollout.workers, 1, cfg.rollout.gpus_per_worker),
                          workers_resources(learners * learner.num_workers, learner.cpus_per_worker,
                                            learner.gpus_per_worker), {"CPU": cfg.reward_cpus}])


def run(cfg: Config, run, model: str | None) -> str:
    import ray

    from rlcomp.checkpoint import latest_checkpoint, load_state, save_checkpoint
    from rlcomp.learner import LearnerGroup
    from rlcomp.rewards import start_reward_service
    from rlcomp.rollout import RolloutGroup, SamplingParams
    from rlcomp.weight_sync import WeightSync

    if model is None:
        raise ValueError(f"stage {run.stage}: no input model")
    algo, stage_dir = cfg.algorithm, run.stage_dir()
    examples = load_examples(cfg.data, cfg.prompt)
    rollout = RolloutGroup(model, cfg.rollout.engine, cfg.rollout.workers, cfg.rollout.gpus_per_worker, seed=run.seed,
                           sleep=cfg.rollout.sleep, prompt=cfg.prompt)
    total_updates = cfg.max_steps * cfg.updates_per_step
    policy = LearnerGroup(model, cfg.learner, cfg.optim, total_updates, run.seed)
    sync = WeightSync(policy, rollout, cfg.rollout.weight_sync)
    critic = LearnerGroup(model, cfg.learner.model_copy(update={"lora": None}), cfg.critic_optim, total_updates,
                          run.seed, head="value", name="critic") if algo.needs_critic else None
    reference = LearnerGroup(model, cfg.learner.model_copy(update={"lora": None}), None,
                             name="reference") if algo.needs_reference else None
    run.record_precision(f"{rollout.engine} engine", rollout.precision)
    for group in filter(None, (policy, critic, reference)):
        run.record_precision(group.name, group.precision)
    rewards = start_reward_service(cfg.reward, num_cpus=cfg.reward_cpus)
    params = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            max_tokens=cfg.rollout.max_tokens, logprobs=True)
    if cfg.reward.needs_reference_table:
        ray.get(rewards.set_reference.remote(reference_table(cfg, rollout, rewards, examples, stage_dir)))
    on_policy = algo.samples_from == "policy"  # else the workers keep the start model's weights throughout
    # Off-policy: keep the start weights to give back to the workers after an evaluation of the policy.
    reference_weights = ray.put(policy.state_dict()) if not on_policy and cfg.eval else None
    order, step, position = prompt_order(len(examples), run.seed), 0, 0
    history = StepHistory(stage_dir / "steps.jsonl")
    if run.resume and (checkpoint := latest_checkpoint(stage_dir)):
        step, position = load_state(checkpoint, policy, critic)
        if on_policy:
            sync.push()
        history.truncate(step)
        console.print(f"resumed from {checkpoint} at step {step}")
    with progress(f"rl {run.stage} ({algo.type})", cfg.max_steps) as bar:
        bar.advance(step)
        while step < cfg.max_steps:
            times = {"start": time.time()}
            prompts = [examples[order(position + i)] for i in range(cfg.prompts_per_step)]
            position += cfg.prompts_per_step
            groups = rollout.generate(prompts, replace(params, seed=run.seed + step))
            times["rollout"] = time.time()
            groups = ray.get(rewards.score.remote(groups, step))
            logged = ray.get(rewards.logged_metrics.remote())
            times["reward"] = time.time()
            metrics = {**train_on(cfg, groups, policy, critic, reference, pad_id=rollout.pad_token_id), **logged}
            run.train_tokens += sum(len(s.prompt_ids) + len(s.response_ids) for g in groups for s in g)
            times["train"] = time.time()
            if on_policy:
                sync.push()
            times["sync"] = time.time()
            step += 1
            metrics.update(step_metrics(groups, times))
            history.append({"step": step, "prompts": [p.id for p in prompts], **metrics})
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                run.log(metrics, step)
            bar.advance(info=f"reward {metrics['reward/total']:.3f} acc {metrics['accuracy']:.3f} "
                             f"len {metrics['response_length/mean']:.0f}")
            if cfg.eval and (step % cfg.eval.every == 0 or step == cfg.max_steps):
                periodic_eval(cfg, run, rollout, policy, step, reference_weights)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint(stage_dir, step, position, policy, critic)
    output = policy.save_model(stage_dir / "model")
    for group in (rollout, policy, critic, reference):
        if group is not None:
            group.shutdown()
    return str(output)


def train_on(cfg: Config, groups, policy, critic, reference, pad_id: int) -> dict[str, float]:
    """The algorithm's training signals for one rollout batch, then `updates_per_step` optimizer steps on it."""
    import torch

    from rlcomp.batching import response_values, rl_micro_batches
    from rlcomp.losses.kl import kl_penalty_in_reward

    algo = cfg.algorithm
    samples = [s for g in groups for s in g]
    n_micro = max(cfg.micro_batches or 0, policy.world_size)
    n_micro += -n_micro % policy.world_size
    temperature = cfg.rollout.temperature
    counts = {"step_target_tokens": sum(len(s.response_ids) for s in samples), "step_sequences": len(samples),
              "max_response_length": cfg.rollout.max_tokens}
    fields = {"old_logprobs": [s.logprobs for s in samples]}
    batches = rl_micro_batches(samples, n_micro, pad_id, fields)
    # One optimizer step on freshly sampled data: pi_old is the current policy, whose log-probs the loss
    # computes anyway (detached), so a separate forward pass for them would change nothing (TRL skips it too).
    from_policy = algo.samples_from == "policy"
    on_policy = cfg.updates_per_step == 1 and from_policy and not algo.kl_in_reward
    if cfg.recompute_logprobs and from_policy and not on_policy:
        fields["old_logprobs"] = response_values(batches, policy.token_outputs(batches, temperature), samples)
    if reference is not None:
        fields["ref_logprobs"] = response_values(batches, reference.token_outputs(batches, temperature), samples)
    if critic is not None:
        fields["values"] = response_values(batches, critic.token_outputs(batches), samples)
    token_rewards = []
    for i, s in enumerate(samples):  # the outcome reward sits on the last token; a KL penalty on every token
        r = torch.zeros(len(s.response_ids))
        r[-1] = s.reward
        if algo.kl_in_reward:
            r -= kl_penalty_in_reward(torch.tensor(fields["old_logprobs"][i]), torch.tensor(fields["ref_logprobs"][i]),
                                      torch.ones(len(r)), algo.kl_in_reward, "k1")
        token_rewards.append(r.tolist())
    per_token = {k: v for k, v in fields.items() if k != "values" and (k != "old_logprobs" or not on_policy)}
    per_token.update(algo.signals(groups, token_rewards, fields))
    batches = rl_micro_batches(samples, n_micro, pad_id, per_token, **counts)
    metrics: dict[str, float] = {}
    for _ in range(cfg.updates_per_step):
        metrics.update(policy.train_step(batches, algo.loss, temperature=temperature, **algo.loss_kwargs()))
        if critic is not None:
            metrics.update(critic.train_step(batches, algo.critic_loss, **algo.critic_loss_kwargs()))
    return metrics


def step_metrics(groups, times: dict[str, float]) -> dict[str, float]:
    samples = [s for g in groups for s in g]
    lengths = [s.length for s in samples]
    metrics = {
        "reward/total": sum(s.reward for s in samples) / len(samples),
        "accuracy": sum(s.rewards.get("accuracy", 0.0) for s in samples) / len(samples),
        "response_length/mean": sum(lengths) / len(lengths),
        "response_length/min": min(lengths),
        "response_length/max": max(lengths),
        "truncated_fraction": sum(not s.finished for s in samples) / len(samples),
    }
    for part in samples[0].rewards:
        metrics[f"reward/{part}"] = sum(s.rewards[part] for s in samples) / len(samples)
    metrics.update(thinking_split(samples, prefix="response_length/"))
    stamps = list(times.items())
    for (_, before), (name, after) in zip(stamps, stamps[1:]):
        metrics[f"time/{name}"] = after - before
    return metrics


def reference_table(cfg: Config, rollout, rewards, examples, stage_dir):
    """Per-prompt L_ref and A_ref (O1-Pruner's ReferenceTable) from K samples of the starting model, saved."""
    import ray

    from rlcomp.rewards import ReferenceTable
    from rlcomp.rollout import SamplingParams

    if cfg.reference.table:
        return ReferenceTable.load(cfg.reference.table)
    params = SamplingParams(n=cfg.reference.samples, temperature=cfg.reference.temperature or cfg.rollout.temperature,
                            top_p=cfg.reference.top_p or cfg.rollout.top_p, max_tokens=cfg.rollout.max_tokens)
    started = time.time()
    with progress("reference samples", len(examples)) as bar:
        groups = rollout.generate(examples, params, on_done=bar.advance, chunk=64)
    table = ray.get(rewards.reference_table.remote(groups))
    table.save(stage_dir / "reference_table.jsonl")
    console.print(f"reference table: {len(examples)} prompts x {cfg.reference.samples} samples "
                  f"in {time.time() - started:.0f}s")
    return table


def periodic_eval(cfg: Config, run, rollout, policy, step: int, reference_weights) -> None:
    """Greedy evaluation of the current policy on the rollout workers (they hold its weights, except when the
    algorithm samples from the start model: then they get them for the evaluation and the start weights back)."""
    import ray

    from rlcomp.stages import eval as eval_stage

    if reference_weights is not None:
        rollout.load_weights(ray.put(policy.state_dict()))
    eval_cfg = eval_stage.Config(data=cfg.eval.data, max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens,
                                 prompt=cfg.prompt)
    result, _ = eval_stage.evaluate(eval_cfg, rollout)
    if reference_weights is not None:
        rollout.load_weights(reference_weights)
    run.log({"eval/accuracy": result["accuracy"], "eval/mean_response_tokens": result["mean_response_tokens"]}, step)
    console.print(f"step {step} eval: accuracy {result['accuracy']:.3f}, "
                  f"mean response tokens {result['mean_response_tokens']:.1f}")
