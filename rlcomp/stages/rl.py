"""Stage `rl`: online RL on one Ray cluster — GRPO, PPO, or O1-Pruner's off-policy objective.

rollout workers -> reward service -> advantages -> FSDP2 learner step -> weight sync -> eval / checkpoint.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from typing import Literal

import ray
import torch
from pydantic import Field, field_validator, model_validator

from rlcomp.advantages import ADVANTAGES, whiten
from rlcomp.batching import response_values, rl_micro_batches
from rlcomp.checkpoint import latest_checkpoint, load_state, save_checkpoint
from rlcomp.cluster import add_resources, workers_resources
from rlcomp.config import check_engine, LearnerConfig, OptimConfig, StageConfig, Strict
from rlcomp.data import DataSpec, load_examples
from rlcomp.learner import LearnerGroup
from rlcomp.prompts import thinking_split
from rlcomp.losses.kl import kl_penalty_in_reward
from rlcomp.report import console, progress, write_jsonl
from rlcomp.rewards import ReferenceTable, RewardSpec, start_reward_service
from rlcomp.rollout import RolloutGroup, SamplingParams
from rlcomp.weight_sync import WeightSync


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


class LossConfig(Strict):
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0)  # DAPO clip-higher: 0.28
    aggregation: Literal["token_mean", "seq_mean", "constant"] | None = None  # None: the algorithm's default
    kl_coef: float = Field(0.0, ge=0)  # KL to the reference model, in the loss
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    ratio: Literal["token", "sequence"] = "token"  # O1-Pruner: per-token or geometric-mean sequence ratio
    value_clip: float | None = 0.2  # PPO critic


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
    algorithm: Literal["grpo", "ppo", "o1_pruner"] = "grpo"
    data: DataSpec
    reward: RewardSpec = RewardSpec()
    reward_cpus: int = Field(1, gt=0)
    rollout: RolloutConfig = RolloutConfig()
    prompts_per_step: int = Field(32, gt=0)
    max_steps: int = Field(20, gt=0)
    updates_per_step: int = Field(1, gt=0)  # optimizer steps per rollout batch (PPO epochs / mini-batches)
    micro_batches: int | None = Field(None, gt=0)  # per optimizer step; default: one per learner rank
    norm_std: bool = True  # GRPO divides by the group std; Dr. GRPO does not
    gamma: float = Field(1.0, ge=0, le=1)  # PPO GAE
    lam: float = Field(0.95, ge=0, le=1)
    kl_in_reward: float = Field(0.0, ge=0)  # per-token KL penalty subtracted from the reward (k1)
    loss: LossConfig = LossConfig()
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
    learners = 1 + (cfg.algorithm == "ppo") + (cfg.loss.kl_coef > 0 or cfg.kl_in_reward > 0)
    learner = cfg.learner
    return add_resources([workers_resources(cfg.rollout.workers, 1, cfg.rollout.gpus_per_worker),
                          workers_resources(learners * learner.num_workers, learner.cpus_per_worker,
                                            learner.gpus_per_worker), {"CPU": cfg.reward_cpus}])


def run(cfg: Config, run, model: str | None) -> str:
    if model is None:
        raise ValueError(f"stage {run.stage}: no input model")
    stage_dir = run.stage_dir()
    examples = load_examples(cfg.data, cfg.prompt)
    uses_o1 = any(p.name == "o1_pruner" for p in cfg.reward.parts)
    rollout = RolloutGroup(model, cfg.rollout.engine, cfg.rollout.workers, cfg.rollout.gpus_per_worker, seed=run.seed,
                           sleep=cfg.rollout.sleep, prompt=cfg.prompt)
    policy = LearnerGroup(model, cfg.learner, cfg.optim, cfg.max_steps * cfg.updates_per_step, run.seed)
    sync = WeightSync(policy, rollout, cfg.rollout.weight_sync)
    critic = LearnerGroup(model, cfg.learner, cfg.critic_optim, cfg.max_steps * cfg.updates_per_step, run.seed,
                          critic=True, name="critic") if cfg.algorithm == "ppo" else None
    needs_ref = cfg.loss.kl_coef > 0 or cfg.kl_in_reward > 0
    reference = LearnerGroup(model, cfg.learner, None, name="reference") if needs_ref else None
    run.record_precision(f"{rollout.engine} engine", rollout.precision)
    for group in filter(None, (policy, critic, reference)):
        run.record_precision(group.name, group.precision)
    rewards = start_reward_service(cfg.reward, num_cpus=cfg.reward_cpus)
    params = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            max_tokens=cfg.rollout.max_tokens, logprobs=True)
    if uses_o1:
        ray.get(rewards.set_reference.remote(reference_table(cfg, rollout, rewards, examples, stage_dir)))
    # O1-Pruner samples from the starting model throughout: keep its weights to restore after evaluations.
    reference_weights = ray.put(policy.state_dict()) if cfg.algorithm == "o1_pruner" and cfg.eval else None
    order, step, position = prompt_order(len(examples), run.seed), 0, 0
    history = StepHistory(stage_dir / "steps.jsonl")
    if run.resume and (checkpoint := latest_checkpoint(stage_dir)):
        step, position = load_state(checkpoint, policy, critic)
        if cfg.algorithm != "o1_pruner":
            sync.push()
        history.truncate(step)
        console.print(f"resumed from {checkpoint} at step {step}")
    with progress(f"rl {run.stage} ({cfg.algorithm})", cfg.max_steps) as bar:
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
            if cfg.algorithm != "o1_pruner":  # O1-Pruner keeps sampling from the reference policy
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
    """Advantages for one rollout batch, then `updates_per_step` optimizer steps on it."""
    samples = [s for g in groups for s in g]
    n_micro = max(cfg.micro_batches or 0, policy.world_size)
    n_micro += -n_micro % policy.world_size
    temperature = cfg.rollout.temperature
    counts = {"step_target_tokens": sum(len(s.response_ids) for s in samples), "step_sequences": len(samples),
              "max_response_length": cfg.rollout.max_tokens}
    old = {"old_logprobs": [s.logprobs for s in samples]}
    batches = rl_micro_batches(samples, n_micro, pad_id, old)
    # One optimizer step on the batch: pi_old is the current policy, whose log-probs the loss computes anyway
    # (detached), so a separate forward pass for them would change nothing. TRL skips it the same way.
    on_policy = cfg.updates_per_step == 1 and cfg.algorithm != "o1_pruner" and not cfg.kl_in_reward
    if cfg.recompute_logprobs and cfg.algorithm != "o1_pruner" and not on_policy:
        old["old_logprobs"] = response_values(batches, policy.token_outputs(batches, temperature), samples)
    per_token = {} if on_policy else dict(old)
    if reference is not None:
        per_token["ref_logprobs"] = response_values(batches, reference.token_outputs(batches, temperature), samples)
    token_rewards = []
    for i, s in enumerate(samples):  # the outcome reward sits on the last token; a KL penalty on every token
        r = [0.0] * len(s.response_ids)
        r[-1] = s.reward
        if cfg.kl_in_reward:
            pen = kl_penalty_in_reward(torch.tensor(per_token["old_logprobs"][i]),
                                       torch.tensor(per_token["ref_logprobs"][i]),
                                       torch.ones(len(r)), cfg.kl_in_reward, "k1")
            r = (torch.tensor(r) - pen).tolist()
        token_rewards.append(r)
    metrics: dict[str, float] = {}
    if cfg.algorithm == "ppo":
        values = response_values(batches, critic.token_outputs(batches), samples)
        per_token["values_old"], per_token["advantages"], per_token["returns"] = values, [], []
        for r, v in zip(token_rewards, values):
            adv, ret = ADVANTAGES["gae"](torch.tensor([r]), torch.tensor([v]), torch.ones(1, len(r)), cfg.gamma, cfg.lam)
            per_token["advantages"].append(adv[0].tolist())
            per_token["returns"].append(ret[0].tolist())
        flat = torch.tensor([a for adv in per_token["advantages"] for a in adv])
        flat = whiten(flat, torch.ones_like(flat)).split([len(r) for r in token_rewards])  # over the whole step
        per_token["advantages"] = [a.tolist() for a in flat]
    elif cfg.algorithm == "grpo":
        totals = torch.tensor([[sum(token_rewards[gi * len(g) + j]) for j in range(len(g))] for gi, g in enumerate(groups)])
        per_token["advantages"] = ADVANTAGES["grpo"](totals, norm_std=cfg.norm_std).flatten().tolist()
    else:  # o1_pruner: the length-harmonizing reward itself is the advantage (samples from pi_ref)
        per_token["advantages"] = [s.reward for s in samples]
        per_token["ref_logprobs"] = old["old_logprobs"]
    batches = rl_micro_batches(samples, n_micro, pad_id, per_token, **counts)
    loss_kwargs = loss_arguments(cfg)
    for _ in range(cfg.updates_per_step):
        metrics.update(policy.train_step(batches, cfg.algorithm, temperature=temperature, **loss_kwargs))
        if critic is not None:
            metrics.update(critic.train_step(batches, "value", value_clip=cfg.loss.value_clip))
    return metrics


def loss_arguments(cfg: Config) -> dict:
    loss = cfg.loss
    kwargs = {"clip_low": loss.clip_low, "clip_high": loss.clip_high, "entropy_coef": loss.entropy_coef}
    if loss.aggregation:
        kwargs["aggregation"] = loss.aggregation
    if cfg.algorithm == "o1_pruner":
        kwargs["ratio"] = loss.ratio
    else:
        kwargs.update(kl_coef=loss.kl_coef, kl_estimator=loss.kl_estimator)
    return kwargs


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


def reference_table(cfg: Config, rollout, rewards, examples, stage_dir) -> ReferenceTable:
    """O1-Pruner's per-prompt L_ref and A_ref from K samples of the starting model, saved for reuse."""
    if cfg.reference.table:
        return ReferenceTable.load(cfg.reference.table)
    params = SamplingParams(n=cfg.reference.samples, temperature=cfg.reference.temperature or cfg.rollout.temperature,
                            top_p=cfg.reference.top_p or cfg.rollout.top_p, max_tokens=cfg.rollout.max_tokens)
    started = time.time()
    with progress("o1_pruner reference samples", len(examples)) as bar:
        groups = rollout.generate(examples, params, on_done=bar.advance, chunk=64)
    table = ray.get(rewards.reference_table.remote(groups))
    table.save(stage_dir / "reference_table.jsonl")
    console.print(f"reference table: {len(examples)} prompts x {cfg.reference.samples} samples "
                  f"in {time.time() - started:.0f}s")
    return table


def periodic_eval(cfg: Config, run, rollout, policy, step: int, reference_weights) -> None:
    """Greedy evaluation of the current policy on the rollout workers (they hold its weights, except under
    O1-Pruner, whose workers get them for the evaluation and the reference weights back after it)."""
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
