"""Stage `icot`: stepwise internalization, ICoT-SI (Deng, Choi & Shieber 2024), chains of thought moved into the
weights. SFT on each example's chain with its first s tokens cut away, s growing as training goes, until no chain
is left and the model answers directly (the answer still the task's: `ans 42`, `#### 42`).

As the official code (da03/Internalize_CoT_Step_by_Step) does it:
- s grows by one every round(steps_per_epoch / tokens_per_epoch) steps; tokens go from the left of the chain
  (the paper: removing from the right fails), at most the whole chain;
- removal smoothing: each example drops o more tokens, o ~ P(o) = (1 - e^-lambda) e^(-lambda o) for o < 100, the
  leftover mass on o = 99 (lambda 4: P(0) = 0.982), drawn even at s = 0;
- a fresh optimizer (Adam's moments cleared) whenever s grows, unless the whole chain was gone already;
- the removed tokens are cut, not masked: the positions after them are renumbered;
- validation at offset 0 (s tokens cut, no smoothing) after every epoch.
The stage ends `steps_after_removal` steps after the last chain token went (or at `max_steps`). Its model is a
plain causal LM: evaluation and comparisons ask it the bare question, and its responses are its length.
"""
from __future__ import annotations

import math
import random
import time
from typing import Literal

from pydantic import Field

from rlcomp.data import DataSpec, load_examples
from rlcomp.report import console, progress, write_json
from rlcomp.schema import LearnerConfig, OptimConfig, StageConfig, workers_resources


class Config(StageConfig):
    type: Literal["icot"] = "icot"
    data: DataSpec  # examples whose responses hold a chain, then the answer
    val_data: DataSpec | None = None  # validated after every epoch, at offset 0
    answer_marker: str = "ans "  # the chain is the response before the marker's last occurrence (GSM8K: "####")
    tokens_per_epoch: float = Field(8, gt=0)  # chain tokens removed per epoch (the code's remove_per_epoch)
    smoothing_lambda: float | None = Field(4.0, gt=0)  # None: no removal smoothing
    max_offset: int = Field(100, gt=1)  # offsets 0 .. max_offset - 1
    remove_all_beyond: int | None = Field(None, gt=0)  # once s reaches it, the whole chain goes (GSM8K: 39)
    reset_optimizer: bool = True
    steps_after_removal: int = Field(0, ge=0)  # steps trained once no chain token is left
    max_steps: int | None = Field(None, gt=0)  # a cap on the whole stage
    batch_size: int = Field(32, gt=0)
    micro_batches: int | None = Field(None, gt=0)
    max_length: int = Field(1024, gt=0)
    batching: Literal["bucket", "pad"] = "bucket"
    optim: OptimConfig = OptimConfig(lr=5e-5, schedule="constant")  # the paper's GPT-2 rate, no scheduler
    learner: LearnerConfig = LearnerConfig()
    log_every: int = Field(10, gt=0)


def resources(cfg: Config) -> dict[str, float]:
    return workers_resources(cfg.learner.num_workers, cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker)


def offset_distribution(lam: float | None, max_offset: int = 100) -> list[float]:
    """P(o) for o in 0 .. max_offset-1: (1 - e^-lam) e^(-lam o), the mass beyond put on the last offset."""
    if lam is None:
        return [1.0] + [0.0] * (max_offset - 1)
    probs = [(1 - math.exp(-lam)) * math.exp(-lam * o) for o in range(max_offset)]
    probs[-1] += 1 - sum(probs)
    return probs


def steps_per_token(n_examples: int, batch_size: int, tokens_per_epoch: float) -> int:
    return max(1, round((n_examples // batch_size) / tokens_per_epoch))


def scheduled(step: int, interval: int, remove_all_beyond: int | None) -> float:
    """s, the chain tokens removed at (0-based) `step`: one more every `interval` steps; inf: the whole chain."""
    s = step // interval
    return math.inf if remove_all_beyond is not None and s >= remove_all_beyond else s


def cut(sequence: tuple[list[int], int], chain: int, k: float) -> tuple[tuple[list[int], int], int]:
    """The sequence (ids, prompt length) whose chain (the `chain` tokens after the prompt) loses its first k,
    and how many chain tokens remain."""
    ids, prompt_len = sequence
    k = int(min(k, chain))
    return (ids[:prompt_len] + ids[prompt_len + k:], prompt_len), chain - k


def chain_lengths(tokenizer, examples, sequences, marker: str, stage: str) -> list[int]:
    """Per example, how many response tokens precede the answer (tokenized alone, as far as they agree with
    the whole response's tokens: a BPE merge across the boundary stays with the answer)."""
    out = []
    for example, (ids, prompt_len) in zip(examples, sequences):
        at = example.response.rfind(marker)
        if at < 0:
            raise ValueError(f"stage {stage}: example {example.id}: its response has no answer marker {marker!r} "
                             f"(set answer_marker): {example.response[:80]!r}")
        chain = tokenizer(example.response[:at], add_special_tokens=False)["input_ids"]
        response = ids[prompt_len:]
        n = 0
        while n < min(len(chain), len(response)) and chain[n] == response[n]:
            n += 1
        out.append(n)
    return out


def run(cfg: Config, run, model: str | None) -> str:
    from rlcomp.batching import micro_batches, step_batches, tokenize_examples
    from rlcomp.learner import LearnerGroup
    from rlcomp.models import load_tokenizer

    if model is None:
        raise ValueError(f"stage {run.stage}: no input model (set `model`, or put a stage that makes one first)")
    tokenizer = load_tokenizer(model)

    def prepared(spec):
        examples = load_examples(run.data(spec), cfg.prompt)
        sequences = tokenize_examples(tokenizer, examples, cfg.max_length, cfg.prompt)
        return sequences, chain_lengths(tokenizer, examples, sequences, cfg.answer_marker, run.stage)

    sequences, chains = prepared(cfg.data)
    if len(sequences) < cfg.batch_size:
        raise ValueError(f"stage {run.stage}: {len(sequences)} examples are fewer than batch_size {cfg.batch_size}")
    val = prepared(cfg.val_data) if cfg.val_data else None
    epoch_steps = len(sequences) // cfg.batch_size
    interval = steps_per_token(len(sequences), cfg.batch_size, cfg.tokens_per_epoch)
    removable = min(max(chains), cfg.remove_all_beyond or math.inf)
    total = int(interval * removable) + cfg.steps_after_removal
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    console.print(f"icot: one more chain token removed every {interval} steps; the longest chain ({max(chains)} "
                  f"tokens) is gone after {interval * removable} steps; {total} steps in all")
    offsets = offset_distribution(cfg.smoothing_lambda, cfg.max_offset)
    rng, draw = random.Random(run.seed), random.Random(run.seed + 1)
    group = LearnerGroup(model, cfg.learner, cfg.optim, total_steps=total, seed=run.seed)
    run.record_precision("learner", group.precision)
    n_micro = max(cfg.micro_batches or 0, group.world_size)
    pad = tokenizer.pad_token_id

    def plan():
        while True:
            yield from step_batches(range(len(sequences)), cfg.batch_size, cfg.batching, rng,
                                    lambda i: len(sequences[i][0]))

    history, tokens, started, removed, whole_gone = [], 0, time.time(), 0, False
    with progress(f"icot {run.stage}", total) as bar:
        for step, indices in zip(range(total), plan()):
            s = scheduled(step, interval, cfg.remove_all_beyond)
            if s > removed and cfg.reset_optimizer and not whole_gone:
                group.reset_optimizer()
            removed = s
            drawn = draw.choices(range(len(offsets)), weights=offsets, k=len(indices))
            batch, left = zip(*(cut(sequences[i], chains[i], s + o) for i, o in zip(indices, drawn)))
            whole_gone = not any(left)
            metrics = group.train_step(micro_batches(list(batch), n_micro, cfg.batching, pad), "sft")
            n = sum(len(ids) for ids, _ in batch)
            tokens += n
            run.train_tokens += n
            metrics.update(removed=min(s, max(chains)), chain_left=sum(left) / len(left))
            if step % cfg.log_every == 0 or step == total - 1:
                run.logger.log(run.stage, metrics, step)
            if val and ((step + 1) % epoch_steps == 0 or step == total - 1):
                history.append({"step": step + 1, "removed": min(s, max(chains)),
                                **validate(group, *val, s, pad, cfg.batch_size)})
                run.logger.log(f"{run.stage}/val", history[-1], step)
                console.print(f"icot: step {step + 1}, {history[-1]['removed']} removed: validation "
                              f"answer accuracy {history[-1]['answer_accuracy']:.3f}")
            bar.advance(info=f"s {min(s, max(chains))} loss {metrics['loss']:.3f}")
    output = run.stage_dir() / "model"
    group.save_model(output)
    group.shutdown()
    write_json(run.stage_dir() / "schedule.json", {"steps": total, "steps_per_token": interval,
                                                   "longest_chain": max(chains), "validation": history})
    console.print(f"icot: {total} steps, {tokens} tokens in {time.time() - started:.0f}s")
    return str(output)


def validate(group, sequences, chains, s: float, pad: int, batch_size: int) -> dict:
    """Teacher-forced at offset 0 (s chain tokens cut): the share of examples whose every answer token (after
    what is left of the chain) is the model's argmax, and the token accuracy over the rest of the response."""
    from rlcomp.batching import micro_batches
    from rlcomp.losses import IGNORE

    exact = right = counted = 0
    for start in range(0, len(sequences), batch_size):
        part = [cut(sequences[i], chains[i], s) for i in range(start, min(start + batch_size, len(sequences)))]
        [batch] = micro_batches([seq for seq, _ in part], 1, "pad", pad)
        targets = batch["targets"]
        hits = (group.logits(batch).argmax(-1) == targets) & (targets != IGNORE)
        right += int(hits.sum())
        counted += int((targets != IGNORE).sum())
        for row, ((ids, prompt_len), left) in enumerate(part):
            exact += bool(hits[row, prompt_len + left - 1 : len(ids) - 1].all())
    return {"answer_accuracy": exact / len(sequences), "token_accuracy": right / max(1, counted)}
