"""Stage `dpo`: preference optimisation on pairs built from an earlier `sample` stage, as Kimi k1.5 builds them
for long2short: per prompt, chosen = the shortest correct sample; rejected = a wrong sample longer than it, or
a correct one at least `ratio` (1.5) times its length; at most `pairs_per_prompt` pairs per prompt.

The reference model's log-probs are computed once, before training, by a frozen learner group that is then
released; the policy trains on the FSDP2 LearnerGroup with the `dpo` loss (rlcomp/losses/dpo.py: sigmoid, IPO,
or the reference-free length-normalised simpo form), each pair's chosen and rejected rows in one micro-batch.
"""
from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from rlcomp.data import DataSpec
from rlcomp.report import console, progress, write_jsonl
from rlcomp.schema import LearnerConfig, OptimConfig, StageConfig, workers_resources


class Config(StageConfig):
    type: Literal["dpo"] = "dpo"
    data: DataSpec  # {from_stage: <a sample stage>}: its rows, several responses per prompt
    ratio: float = Field(1.5, ge=1)  # a correct response this many times the chosen's length is rejected too
    pairs_per_prompt: int = Field(2, gt=0)
    variant: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # sigmoid only (cDPO / OpenRLHF)
    gamma: float = Field(0.5, ge=0)  # simpo's target margin
    nll_coef: float = Field(0.0, ge=0)  # + this x the chosen response's mean NLL (RPO; TRL's rpo_alpha)
    batch_size: int = Field(16, gt=0)  # pairs per optimizer step
    micro_batches: int | None = Field(None, gt=0)  # per step, over all ranks; default one per rank
    max_steps: int | None = Field(None, gt=0)  # default: epochs x steps per epoch
    epochs: float = Field(1.0, gt=0)
    max_length: int = Field(2048, gt=0)
    optim: OptimConfig = OptimConfig(lr=5e-7)
    learner: LearnerConfig = LearnerConfig()
    log_every: int = Field(10, gt=0)


def resources(cfg: Config) -> dict[str, float]:
    return workers_resources(cfg.learner.num_workers, cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker)


def build_pairs(by_prompt: dict[str, list[dict]], ratio: float, per_prompt: int, rng: random.Random):
    """(chosen, rejected) sample rows: Kimi's rule, at most `per_prompt` rejected picked at random per prompt."""
    pairs = []
    for rows in by_prompt.values():
        correct = [r for r in rows if r["correct"]]
        if not correct:
            continue
        chosen = min(correct, key=lambda r: r["tokens"])
        rejected = [r for r in rows if (not r["correct"] and r["tokens"] > chosen["tokens"])
                    or (r["correct"] and r["tokens"] >= ratio * chosen["tokens"])]
        pairs += [(chosen, r) for r in rng.sample(rejected, min(per_prompt, len(rejected)))]
    return pairs


def pair_batches(pairs: list[tuple], n: int, pad_id: int) -> list[dict]:
    """n micro-batches of whole pairs: chosen rows first, their rejected rows after them in the same order."""
    from rlcomp.batching import collate_padded

    batches = []
    for part in (pairs[i::n] for i in range(n)):
        batch = collate_padded([c for c, _ in part] + [r for _, r in part], pad_id)
        batch["step_pairs"] = len(pairs)
        batches.append(batch)
    return batches


def run(cfg: Config, run, model: str | None) -> str:
    import torch

    from rlcomp.batching import tokenize_examples
    from rlcomp.data.loaders import read_samples
    from rlcomp.learner import LearnerGroup
    from rlcomp.models import load_tokenizer
    from rlcomp.sample import Example

    if model is None:
        raise ValueError(f"stage {run.stage}: no input model")
    if not cfg.data.from_stage:
        raise ValueError(f"stage {run.stage}: data needs `from_stage` (a sample stage's responses to pair)")
    rng = random.Random(run.seed)
    rows = build_pairs(read_samples(run.data(cfg.data).path), cfg.ratio, cfg.pairs_per_prompt, rng)
    if cfg.data.n is not None:
        rows = rows[: cfg.data.n]
    write_jsonl(run.stage_dir() / "pairs.jsonl", ({"id": c["id"], "prompt": c["prompt"], "chosen": c["response"],
                                                   "rejected": r["response"], "chosen_tokens": c["tokens"],
                                                   "rejected_tokens": r["tokens"], "rejected_correct": r["correct"]}
                                                  for c, r in rows))
    if len(rows) < cfg.batch_size:
        raise ValueError(f"stage {run.stage}: {len(rows)} pairs are fewer than batch_size {cfg.batch_size} "
                         f"(prompts need a correct sample and a longer wrong or {cfg.ratio}x longer correct one)")
    tokenizer = load_tokenizer(model)
    seqs = tokenize_examples(tokenizer, [Example(prompt=r["prompt"], answer="", response=r["response"])
                                         for pair in rows for r in pair], cfg.max_length, cfg.prompt)
    pairs = [(seqs[2 * i], seqs[2 * i + 1]) for i in range(len(rows))]
    steps_per_epoch = len(pairs) // cfg.batch_size
    total = cfg.max_steps or max(1, int(cfg.epochs * steps_per_epoch))

    # The reference's summed log-prob of every response, once; then its group is released.
    reference = LearnerGroup(model, cfg.learner.model_copy(update={"lora": None}), None, name="reference")
    chunks = [pairs[i : i + 32] for i in range(0, len(pairs), 32)]
    ref_sums: list[tuple[float, float]] = []
    with progress("dpo reference log-probs", len(chunks)) as bar:
        for i in range(0, len(chunks), reference.world_size):
            group = chunks[i : i + reference.world_size]
            group += [group[-1]] * (reference.world_size - len(group))  # every rank runs a forward
            outputs = reference.token_outputs([pair_batches(c, 1, tokenizer.pad_token_id)[0] for c in group])
            for c, out in list(zip(chunks[i : i + reference.world_size], outputs)):
                sums = out.sum(-1).tolist()
                ref_sums += list(zip(sums[: len(c)], sums[len(c):]))
                bar.advance()
    reference.shutdown()
    indexed = list(range(len(pairs)))

    group = LearnerGroup(model, cfg.learner, cfg.optim, total_steps=total, seed=run.seed)
    run.record_precision("learner", group.precision)
    n_micro = max(cfg.micro_batches or 0, group.world_size)
    n_micro += -n_micro % group.world_size
    if n_micro > cfg.batch_size:
        raise ValueError(f"stage {run.stage}: batch_size {cfg.batch_size} pairs cannot fill {n_micro} micro-batches")
    kwargs = {"beta": cfg.beta, "variant": cfg.variant, "label_smoothing": cfg.label_smoothing, "gamma": cfg.gamma,
              "nll_coef": cfg.nll_coef}
    order: list[int] = []
    with progress(f"dpo {run.stage}", total) as bar:
        for step in range(total):
            if len(order) < cfg.batch_size:
                order = rng.sample(indexed, len(indexed))
            chosen_ids, order = order[: cfg.batch_size], order[cfg.batch_size :]
            step_pairs = [pairs[i] for i in chosen_ids]
            batches = pair_batches(step_pairs, n_micro, tokenizer.pad_token_id)
            for b, part in zip(batches, (chosen_ids[i::n_micro] for i in range(n_micro))):
                b["ref_sequence_logprobs"] = torch.tensor([ref_sums[i][0] for i in part] + [ref_sums[i][1] for i in part])
            metrics = group.train_step(batches, "dpo", **kwargs)
            run.train_tokens += sum(len(c[0]) + len(r[0]) for c, r in step_pairs)
            if step % cfg.log_every == 0 or step == total - 1:
                run.log(metrics, step)
            bar.advance(info=f"loss {metrics['loss']:.3f} acc {metrics['reward_accuracy']:.2f} "
                             f"margin {metrics['reward_margin']:.2f}")
    output = group.save_model(run.stage_dir() / "model")
    group.shutdown()
    console.print(f"dpo: {len(pairs)} pairs, {total} steps of {cfg.batch_size}, final loss {metrics['loss']:.4f}, "
                  f"reward accuracy {metrics['reward_accuracy']:.3f}")
    return str(output)
