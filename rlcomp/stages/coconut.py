"""Stage `coconut`: Chain of Continuous Thought (Hao et al., Meta 2024; facebookresearch/coconut).

A curriculum over the chain's steps (parts of the response ending in `step_separator`, before the answer):
stage 0 trains on the whole chain; stage k replaces the first k steps by k * `thoughts_per_step` continuous
thoughts (rlcomp/latent.py: each thought's input is the last hidden state before it, gradients through all of
them); past `max_latent_stage` every step goes and `max_latent_stage * thoughts_per_step` thoughts stay. A
sequence reads `question <|start-latent|> <|latent|>... <|end-latent|> remaining steps answer`; the loss is
masked over the question, the markers and the thoughts. The curriculum moves on every `epochs_per_stage`
epochs; the optimizer starts afresh per stage (the paper) or per epoch (the official code). The saved model
thinks the final stage's number of thoughts before answering wherever it generates (eval, sample, compare);
those positions count in its response length.
"""
from __future__ import annotations

import random
import time
from typing import Literal

from pydantic import Field

from rlcomp.data import DataSpec, load_examples
from rlcomp.report import console, progress, write_json
from rlcomp.schema import LearnerConfig, OptimConfig, StageConfig, workers_resources


class Config(StageConfig):
    type: Literal["coconut"] = "coconut"
    data: DataSpec
    answer_marker: str = "ans "  # the chain is the response before the marker's last occurrence (GSM8K: "####")
    step_separator: str = ";"  # a step ends with it (synthetic tasks: `;`; GSM8K solutions: a line, "\n")
    thoughts_per_step: int = Field(1, gt=0)  # c
    max_latent_stage: int = Field(3, gt=0)
    pad_latent_to_max: bool = True  # every question gets stage k's k * c thoughts, as at inference
    epochs_per_stage: int = Field(3, gt=0)
    epochs: int | None = Field(None, gt=0)  # default: every stage once and the final one for as long
    reset_optimizer: Literal["stage", "epoch", "never"] = "stage"
    max_steps: int | None = Field(None, gt=0)  # a cap on the whole stage
    batch_size: int = Field(32, gt=0)
    micro_batches: int | None = Field(None, gt=0)
    max_length: int = Field(1024, gt=0)
    batching: Literal["bucket", "pad"] = "bucket"
    optim: OptimConfig = OptimConfig(lr=1e-4, weight_decay=0.01, schedule="constant")  # the paper's, no scheduler
    learner: LearnerConfig = LearnerConfig()
    log_every: int = Field(10, gt=0)


def resources(cfg: Config) -> dict[str, float]:
    return workers_resources(cfg.learner.num_workers, cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker)


def split_steps(response: str, marker: str, separator: str) -> tuple[list[str], str]:
    """(the chain's steps, each with its separator; the rest: the answer, with any text after the last step)."""
    at = response.rfind(marker)
    if at < 0:
        raise ValueError(f"no answer marker {marker!r} in the response")
    parts = response[:at].split(separator)
    return [p + separator for p in parts[:-1]], parts[-1] + response[at:]


def curriculum(stage: int, n_steps: int, cfg: Config) -> tuple[int, int]:
    """(steps replaced, thoughts) for a question of `n_steps` steps at curriculum stage `stage`."""
    cap = cfg.max_latent_stage if cfg.pad_latent_to_max else min(cfg.max_latent_stage, n_steps)
    skipped = n_steps if stage > cfg.max_latent_stage else min(stage, n_steps)
    return skipped, min(stage, cap) * cfg.thoughts_per_step


def sequence(question: list[int], steps: list[list[int]], answer: list[int], stage: int, ids: dict,
             cfg: Config) -> tuple[list[int], int]:
    """(token ids, the length the loss skips): question, markers and thoughts, then what is left in text."""
    skipped, thoughts = curriculum(stage, len(steps), cfg)
    head = question + [ids["start"]] + [ids["latent"]] * thoughts + [ids["end"]]
    rest = [t for step in steps[skipped:] for t in step] + answer
    return (head + rest)[: cfg.max_length], len(head)


def prepare_model(model: str, out, thoughts: int):
    """The input model with the latent tokens added (initialised as EOS, its latent spec saying `thoughts`),
    saved to `out`; returns their ids and the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlcomp.latent import add_latent_tokens, write_spec
    from rlcomp.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    probe = torch.tensor([[tokenizer.eos_token_id] * 2])
    with torch.no_grad():  # rlcomp feeds thoughts as embeddings: position embeddings added inside break that
        if not torch.equal(hf(probe, output_hidden_states=True).hidden_states[0], hf.get_input_embeddings()(probe)):
            raise ValueError(f"{model}: its first layer's input is not the token embedding (position embeddings "
                             "added, as in GPT-2): continuous thoughts here need a rotary-position model")
    ids = add_latent_tokens(hf, tokenizer, tokenizer.eos_token_id)
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_spec(out, ids, thoughts)  # the learner saves it with the trained model
    return ids, tokenizer


def run(cfg: Config, run, model: str | None) -> str:
    from rlcomp.batching import micro_batches, step_batches
    from rlcomp.learner import LearnerGroup
    from rlcomp.prompts import PromptRenderer

    if model is None:
        raise ValueError(f"stage {run.stage}: no input model (set `model`, or put a stage that makes one first)")
    thoughts = cfg.max_latent_stage * cfg.thoughts_per_step
    ids, tokenizer = prepare_model(model, run.stage_dir() / "init", thoughts)
    renderer = PromptRenderer(tokenizer, cfg.prompt)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    examples = []
    for e in load_examples(run.data(cfg.data), cfg.prompt):
        try:
            steps, answer = split_steps(e.response, cfg.answer_marker, cfg.step_separator)
        except ValueError as exc:
            raise ValueError(f"stage {run.stage}: example {e.id}: {exc} (set answer_marker)") from None
        examples.append((renderer.ids(e.prompt), [encode(s) for s in steps], encode(answer) + [tokenizer.eos_token_id]))
    if len(examples) < cfg.batch_size:
        raise ValueError(f"stage {run.stage}: {len(examples)} examples are fewer than batch_size {cfg.batch_size}")
    final = cfg.max_latent_stage + 1
    epochs = cfg.epochs or cfg.epochs_per_stage * (final + 1)
    epoch_steps = len(examples) // cfg.batch_size
    total = min(epochs * epoch_steps, cfg.max_steps or epochs * epoch_steps)
    console.print(f"coconut: {epochs} epochs of {epoch_steps} steps, stage k every {cfg.epochs_per_stage} epochs "
                  f"(stage {final}: no text steps, {thoughts} thoughts); "
                  f"{total} steps")
    group = LearnerGroup(str(run.stage_dir() / "init"), cfg.learner, cfg.optim, total_steps=total, seed=run.seed)
    run.record_precision("learner", group.precision)
    n_micro = max(cfg.micro_batches or 0, group.world_size)
    rng, step, tokens, started, history = random.Random(run.seed), 0, 0, time.time(), []
    with progress(f"coconut {run.stage}", total) as bar:
        for epoch in range(epochs):
            stage = min(epoch // cfg.epochs_per_stage, final)
            new_stage = epoch % cfg.epochs_per_stage == 0
            if epoch and (cfg.reset_optimizer == "epoch" or (cfg.reset_optimizer == "stage" and new_stage)):
                group.reset_optimizer()
            seqs = [sequence(q, s, a, stage, ids, cfg) for q, s, a in examples]
            for indices in step_batches(range(len(seqs)), cfg.batch_size, cfg.batching, rng, lambda i: len(seqs[i][0])):
                if step >= total:
                    break
                batch = [seqs[i] for i in indices]
                passes = max(sum(t == ids["latent"] for t in seq) for seq, _ in batch)
                mbs = micro_batches(batch, n_micro, cfg.batching, tokenizer.pad_token_id)
                for mb in mbs:
                    mb.update(latent_id=ids["latent"], latent_passes=passes)
                metrics = group.train_step(mbs, "coconut")
                n = sum(len(seq) for seq, _ in batch)
                tokens += n
                run.train_tokens += n
                if step % cfg.log_every == 0 or step == total - 1:
                    run.logger.log(run.stage, {**metrics, "curriculum_stage": stage, "thoughts": passes}, step)
                bar.advance(info=f"stage {stage} loss {metrics['loss']:.3f}")
                step += 1
            history.append({"epoch": epoch, "stage": stage, "steps": step, "loss": metrics["loss"]})
    output = run.stage_dir() / "model"
    group.save_model(output)
    group.shutdown()
    write_json(run.stage_dir() / "curriculum.json", {"epochs": history, "steps": step})
    console.print(f"coconut: {step} steps, {tokens} tokens in {time.time() - started:.0f}s; the model thinks "
                  f"{thoughts} thoughts before answering")
    return str(output)
