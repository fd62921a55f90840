"""Stage `sft`: supervised fine-tuning on a dataset's gold responses, on the FSDP2 LearnerGroup."""
from __future__ import annotations

import random
import time
from typing import Literal

from pydantic import Field

from rlcomp.data import DataSpec, load_examples
from rlcomp.report import console, progress
from rlcomp.schema import LearnerConfig, OptimConfig, StageConfig, workers_resources


class Config(StageConfig):
    type: Literal["sft"] = "sft"
    data: DataSpec
    batch_size: int = Field(32, gt=0)  # sequences per optimizer step
    micro_batches: int | None = Field(None, gt=0)  # per step, over all ranks; default one per rank
    max_steps: int | None = Field(None, gt=0)  # default: epochs x steps per epoch
    epochs: float = Field(1.0, gt=0)
    max_length: int = Field(1024, gt=0)
    batching: Literal["bucket", "pack", "pad"] = "bucket"
    optim: OptimConfig = OptimConfig(lr=1e-5)
    learner: LearnerConfig = LearnerConfig()
    save_every: int | None = Field(None, gt=0)  # steps between checkpoints of the model (HF format)
    log_every: int = Field(10, gt=0)


def resources(cfg: Config) -> dict[str, float]:
    """What the stage holds at once (a comparison runs methods side by side while they fit)."""
    return workers_resources(cfg.learner.num_workers, cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker)


def run(cfg: Config, run, model: str | None) -> str:
    if model is None:
        raise ValueError(f"stage {run.stage}: no input model (set `model`, or put a make_model stage first)")
    return train(cfg, run, model, load_examples(run.data(cfg.data), cfg.prompt))


def joined_short_phases(phases: list[list[int]], batch_size: int) -> list[list[int]]:
    """Phases of fewer examples than a batch joined to the next one (the last to the one before): a MixChain level
    where few answers were right still trains, with its neighbour."""
    out, carry = [], []
    for phase in phases:
        carry = carry + list(phase)
        if len(carry) >= batch_size:
            out.append(carry)
            carry = []
    if carry and out:
        out[-1] = out[-1] + carry
    if carry or len(out) < len(phases):
        console.print(f"sft: {len(phases)} phases joined into {len(out)} (each needs batch_size {batch_size} examples)")
    return out


def train(cfg: Config, run, model: str, examples: list, loss: str = "sft", fields: dict[str, list] | None = None,
          phases: list[list[int]] | None = None, lora_scale: float = 1.0, subdir: str | None = None) -> str:
    """SFT of `model` on the examples' gold responses, as `cfg` says; returns the saved model's directory.
    Stages that build their own training data call it (c3ot, cot_valve): `fields[key][i]` is a value example i's
    micro-batch row carries for `loss` (CoT-Valve++'s per-sample LoRA scale); `phases` are lists of example
    indices trained one epoch each, in order (CoT-Valve's progressive schedule), instead of `cfg.epochs`;
    `lora_scale` is the scale a LoRA adapter is merged at in the saved model; `subdir` names one of several
    models a stage trains (skip_steps' rounds): saved under the stage directory's `subdir/model`."""
    from rlcomp.batching import micro_batches, step_batches, tokenize_examples
    from rlcomp.learner import LearnerGroup
    from rlcomp.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    sequences = tokenize_examples(tokenizer, examples, cfg.max_length, cfg.prompt)
    rng = random.Random(run.seed)
    length = lambda i: len(sequences[i][0])  # noqa: E731
    if phases is None:
        if len(sequences) < cfg.batch_size:
            raise ValueError(f"stage {run.stage}: {len(sequences)} examples are fewer than batch_size {cfg.batch_size}")
        total = cfg.max_steps or max(1, int(cfg.epochs * (len(sequences) // cfg.batch_size)))

        def plan():
            while True:  # epoch after epoch, each shuffled anew
                yield from reversed(step_batches(range(len(sequences)), cfg.batch_size, cfg.batching, rng, length))
    else:
        phases = joined_short_phases(phases, cfg.batch_size)
        if not phases:
            raise ValueError(f"stage {run.stage}: fewer examples than batch_size {cfg.batch_size}")
        planned = [step_batches(phase, cfg.batch_size, cfg.batching, rng, length) for phase in phases]
        planned = [step for steps in planned for step in steps]
        total = min(cfg.max_steps or len(planned), len(planned))
        plan = lambda: iter(planned)  # noqa: E731
    group = LearnerGroup(model, cfg.learner, cfg.optim, total_steps=total, seed=run.seed)
    run.record_precision("learner", group.precision)
    n_micro = max(cfg.micro_batches or 0, group.world_size)
    output = run.stage_dir() / (subdir or "") / "model"
    tag = f"{run.stage}/{subdir}" if subdir else run.stage
    tokens, started = 0, time.time()
    with progress(f"sft {tag}", total) as bar:
        for step, indices in zip(range(total), plan()):
            batch = [sequences[i] for i in indices]
            per_sequence = {key: [values[i] for i in indices] for key, values in (fields or {}).items()}
            metrics = group.train_step(micro_batches(batch, n_micro, cfg.batching, tokenizer.pad_token_id,
                                                     per_sequence), loss)
            n = sum(len(ids) for ids, _ in batch)
            tokens += n
            run.train_tokens += n
            metrics["tokens_per_s"] = tokens / (time.time() - started)
            if step % cfg.log_every == 0 or step == total - 1:
                run.logger.log(tag, metrics, step)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                group.save_model(output, lora_scale)
            bar.advance(info=f"loss {metrics['loss']:.3f} tok/s {metrics['tokens_per_s']:.0f}")
    group.save_model(output, lora_scale)
    group.shutdown()
    console.print(f"sft: {total} steps, {tokens} tokens, {tokens / (time.time() - started):.0f} tokens/s, "
                  f"final loss {metrics['loss']:.4f}")
    return str(output)
