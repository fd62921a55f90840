"""Stage `ccot`: Compressed Chain of Thought (Cheng & Van Durme 2024, arXiv 2412.13171; no official code).

The chain is the response before `answer_marker`'s last occurrence (m tokens), the answer the rest. A model
learns to think k = ceil(r * m) contemplation tokens, continuous vectors, instead of the chain:
1. Gold: the frozen input model theta on [prompt; chain]; k chain positions p_1..p_k, evenly spaced (the last
   token of each of k equal parts: p_i = floor(i * m / k) - 1, 0-based; the paper's learned scorer, about as
   good there, is not implemented); z_i^j their hidden states at every layer j (hidden-state index: 0 the
   embeddings, L the last layer, post-norm), z_0 the prompt's last token's.
2. The contemplator phi (a LoRA adapter on theta, `phi_lora`), teacher-forced on [prompt; k positions]:
   position i's input embedding is z_{i-1}^l (l = `layer`, the feedback layer); trained one layer at a time as
   the paper does: in phase j (1..L) only decoder layer j's adapter trains, on the layer-j states,
   (1/k) sum_i MSE(z_i^j, zhat_i^j) / var(z_i^j) (rlcomp/losses/ccot.py), `phi_steps_per_layer` steps each.
   The gold states are computed in the same forward with phi's LoRA branches zeroed (theta, exactly).
   `phi_inputs: own` feeds phi the states it makes contemplating on its own instead (no gradient through them),
   as inference does; the targets stay the gold states.
3. phi contemplates autoregressively on every training prompt (2k positions, or the cap; each input the
   layer-l state phi made at the position before: rlcomp/latent.py `contemplate`); its layer-l states there are
   the contemplation tokens, and its states at every layer there are kept for psi (rows x 2k x (L + 1) x D
   values, in the learner's precision). On 256 of the prompts they are held against the gold states:
   `phi_own_nmse` in phases.json, per layer (1 is the mean state's score), says whether phi makes the chain's
   states on its own, which is all the decoder can read.
4. The END head: a binary classifier on phi's last-layer state at each contemplation position (stop from the k-th
   on), one hidden layer (`end_head_hidden`) trained by Adam on those autoregressive states.
5. The decoder psi (a LoRA adapter on theta, `psi_lora`): SFT on the answer after [prompt; contemplation
   positions], the input of each decoder layer there phi's state at that layer (rlcomp/latent.py
   `layer_inputs`), so that psi attends to keys and values made from phi's states; as many positions as the END
   head lets phi make (`psi_contemplation: end_head`), or exactly k (`gold`). With `upper_layers: psi` (the
   paper's form: phi's layers after l unfrozen) psi reads phi's states up to the feedback layer only and its own
   trainable layers make the states above it there, with the answer's gradient.

The saved model (rlcomp/latent.py) is psi merged, a plain Hugging Face model, with `contemplator/` (phi merged),
`end_head.safetensors` and `ccot.json` ({layer, r, cap}, and `filled_layers` with `upper_layers: psi`). Wherever
it generates (eval, sample, compare: the hf engine, which `auto` picks), phi contemplates until the END head says
stop or `cap` = ceil(200 r) positions, then psi answers; the contemplation positions count in the response length
(`latent_positions`).

Deviations from the paper:
- The paper's psi attends to phi's key-value cache and unfreezes phi's layers after l; here psi attends to keys
  and values its own (LoRA-adapted) projections make from phi's states, and phi stays frozen: at every layer
  (`upper_layers: phi`, the default), or up to layer l with psi's own layers above it (`psi`: psi's adapter
  stands for phi's unfrozen later layers, one adapter rather than two).
- psi trains on as many contemplation positions as the END head gives at inference; the paper trains it on the
  gold k (`psi_contemplation: gold`). Where k depends on the problem (the chain's length, here its carries), a
  psi that always saw k fails on every prompt where the head misses it.
- phi is one adapter on every layer, trained a layer at a time (the others get no gradient), rather than a new
  model per layer; the END head is trained after phi, on phi's own autoregressive states, positions past k
  labelled stop too, and has a hidden layer by default (the paper: "a binary head").
- Examples with an empty chain, or longer than `max_length`, are left out (counted in phases.json).
"""
from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from pydantic import Field, model_validator

from rlcomp.data import DataSpec, load_examples
from rlcomp.report import console, progress, write_json
from rlcomp.schema import LearnerConfig, LoraConfig, OptimConfig, StageConfig, workers_resources


class Config(StageConfig):
    type: Literal["ccot"] = "ccot"
    data: DataSpec  # examples whose responses hold a chain, then the answer
    answer_marker: str = "ans "  # the chain is the response before the marker's last occurrence (GSM8K: "####")
    r: float = Field(0.1, gt=0, le=1)  # compression ratio: k = ceil(r * m) contemplation tokens for m chain tokens
    layer: int | None = Field(None, ge=0)  # feedback layer (hidden-state index, 0..L); default: the middle, L // 2
    positions: Literal["even"] = "even"  # which chain positions are gold (the paper's scorer: not implemented)
    cap: int | None = Field(None, gt=0)  # most contemplation tokens at inference; default ceil(200 r) (the paper)
    phi_lora: LoraConfig = LoraConfig(r=32, alpha=64)  # the paper: r 128 (LLaMA-2-7B)
    psi_lora: LoraConfig = LoraConfig(r=16, alpha=32)  # the paper: r 64
    phi_steps_per_layer: int = Field(100, gt=0)
    # phi's inputs in training: the gold states (`gold`, teacher-forced, the paper) or the states it made itself
    # contemplating on its own (`own`, as at inference, no gradient through them): taught on gold inputs, its
    # states drift from the gold ones when fed back (README)
    phi_inputs: Literal["gold", "own"] = "gold"
    psi_steps: int = Field(1000, gt=0)
    end_head_hidden: int = Field(256, ge=0)  # the END head's hidden units (0: linear, logistic regression)
    end_head_steps: int = Field(10000, gt=0)  # Adam steps on 512 positions each
    # psi learns the answer after as many contemplation positions as the END head lets phi make (`end_head`, as at
    # inference) or after exactly k (`gold`)
    psi_contemplation: Literal["end_head", "gold"] = "end_head"
    # the contemplation positions' states above the feedback layer, as psi reads them: phi's (`phi`), or made by
    # psi's own trainable layers from phi's states up to layer l (`psi`; the paper unfreezes phi's layers after l)
    upper_layers: Literal["phi", "psi"] = "phi"
    batch_size: int = Field(32, gt=0)
    micro_batches: int | None = Field(None, gt=0)
    max_length: int = Field(1024, gt=0)
    optim: OptimConfig = OptimConfig(lr=1e-4, schedule="constant")  # phi's and psi's
    learner: LearnerConfig = LearnerConfig()  # without lora: phi_lora and psi_lora say it
    log_every: int = Field(10, gt=0)

    @model_validator(mode="after")
    def _no_learner_lora(self):
        if self.learner.lora is not None:
            raise ValueError("ccot trains two LoRA adapters: set phi_lora and psi_lora, not learner.lora")
        return self


def resources(cfg: Config) -> dict[str, float]:  # phi's learners, then psi's: never both at once
    return workers_resources(cfg.learner.num_workers, cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker)


def contemplations(m: int, r: float) -> int:
    """k = ceil(r * m), r taken as the decimal it is written as (ceil(0.1 * 30) is 3, not 4)."""
    return math.ceil(Fraction(repr(float(r))) * m)


def evenly_spaced(m: int, k: int) -> list[int]:
    """k of m chain positions (0-based): the last token of each of k equal parts, the last one the chain's end."""
    return [(i + 1) * m // k - 1 for i in range(k)]


@dataclass
class Row:
    prompt: list[int]
    chain: list[int]
    answer: list[int]  # with EOS
    spots: list[int]  # the k gold chain positions

    @property
    def k(self) -> int:
        return len(self.spots)


def prepare(examples, tokenizer, renderer, cfg: Config, stage: str) -> tuple[list[Row], dict]:
    """Rows of token ids with their gold positions; examples without a chain or too long are counted and left out."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows, no_chain, too_long = [], 0, 0
    for e in examples:
        at = e.response.rfind(cfg.answer_marker)
        if at < 0:
            raise ValueError(f"stage {stage}: example {e.id}: no answer marker {cfg.answer_marker!r} in its response "
                             f"(set answer_marker): {e.response[:80]!r}")
        prompt, chain = renderer.ids(e.prompt), encode(e.response[:at])
        answer = encode(e.response[at:]) + [tokenizer.eos_token_id]
        if not chain:
            no_chain += 1
        elif len(prompt) + len(chain) + len(answer) > cfg.max_length:
            too_long += 1
        else:
            rows.append(Row(prompt, chain, answer, evenly_spaced(len(chain), contemplations(len(chain), cfg.r))))
    return rows, {"examples": len(rows), "no_chain": no_chain, "too_long": too_long}


def deal(items: list, n: int) -> list[list]:
    """items round-robin into n parts (as many micro-batches as the step needs)."""
    return [items[i::n] for i in range(n)]


def padded(seqs: list[list[int]], pad: int, left: bool = False):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[b, cols], mask[b, cols] = torch.tensor(s, dtype=torch.long), 1
    return ids, mask


def slots(rows: list[Row], width: int, fill):
    """[B, K] long: fill(row, i) for each row's i-th contemplation, 0 past its k."""
    import torch

    out = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, : row.k] = torch.tensor([fill(row, i) for i in range(row.k)], dtype=torch.long)
    return out


def phi_batch(rows: list[Row], layer: int, feedback: int, pad: int, own_steps: int | None = None) -> dict:
    """phi's micro-batch for phase `layer` (rlcomp/losses/ccot.py): the gold sequences [prompt; chain]
    right-padded; contemplation i (0-based) sits at len(prompt) + i in phi's sequence, takes the gold state at the
    position before gold spot i (the prompt's last token for the first), and targets gold spot i. With
    `own_steps` (the step's largest k, the same on every rank): the prompts left-padded too, for phi to
    contemplate that many positions and take its own states as inputs instead (`phi_inputs: own`)."""
    import torch

    width = max(row.k for row in rows)
    input_ids, mask = padded([row.prompt + row.chain for row in rows], pad)
    phi_len = torch.tensor([len(row.prompt) + row.k for row in rows])
    own = {}
    if own_steps is not None:
        own = dict(zip(("ccot_prompt_ids", "ccot_prompt_mask"), padded([row.prompt for row in rows], pad, left=True)))
        own["ccot_own_steps"] = own_steps
    return {"input_ids": input_ids, "attention_mask": mask, **own,
            "ccot_mask": (torch.arange(int(phi_len.max()))[None] < phi_len[:, None]).long(),
            "ccot_at": slots(rows, width, lambda row, i: len(row.prompt) + i),
            "ccot_src": slots(rows, width, lambda row, i: len(row.prompt) + (row.spots[i - 1] if i else -1)),
            "ccot_dst": slots(rows, width, lambda row, i: len(row.prompt) + row.spots[i]),
            "ccot_valid": slots(rows, width, lambda row, i: 1).float(),
            "ccot_layer": layer, "feedback_layer": feedback}


def decode_batch(rows: list[Row], states: list, pad: int) -> dict:
    """psi's micro-batch: [prompt; n contemplation positions; answer] right-padded, the loss on the answer, phi's
    states there (states[b]: [n_b, L, D], decoder layer j's input at contemplation i) to put at every layer."""
    import torch

    from rlcomp.batching import collate_padded

    n = [len(s) for s in states]
    batch = collate_padded([(row.prompt + [pad] * c + row.answer, len(row.prompt) + c) for row, c in zip(rows, n)], pad)
    stacked = torch.zeros(len(rows), max(n), *states[0].shape[1:], dtype=states[0].dtype)
    at = torch.zeros(len(rows), max(n), dtype=torch.long)
    valid = torch.zeros(len(rows), max(n))
    for b, (row, s) in enumerate(zip(rows, states)):
        stacked[b, : len(s)], valid[b, : len(s)] = s, 1
        at[b, : len(s)] = torch.arange(len(row.prompt), len(row.prompt) + len(s))
    return {**batch, "ccot_at": at, "ccot_valid": valid, "ccot_states": stacked}


def train_end_head(finals: list, ks: list[int], steps: int, hidden: int, seed: int = 0):
    """The END head on phi's last-layer states (finals[b]: [n_b, D], phi run past row b's k): positions from the
    k-th on are labelled stop (the k-th is where to stop; past it, stopping at once is the least wrong), the rest
    go on; Adam on batches of 512 positions, features standardised inside the head. Returns (EndHead, stats,
    each row's count: `first_stop`)."""
    import torch
    import torch.nn.functional as F

    from rlcomp.latent import EndHead

    x = torch.cat(finals).float()
    y = torch.cat([(torch.arange(len(f)) >= k - 1).float() for f, k in zip(finals, ks)])
    with torch.random.fork_rng():  # the head's initial weights, without touching the caller's random state
        torch.manual_seed(seed)
        head = EndHead(x.shape[1], hidden)
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.net.parameters(), lr=1e-3)
    for _ in range(steps):
        pick = torch.randint(len(x), (min(512, len(x)),), generator=generator)
        loss = F.binary_cross_entropy_with_logits(head.logits(x[pick]), y[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    stops = head(x)  # once over every position, then split by row
    counts = [first_stop(s) for s in stops.split([len(f) for f in finals])]
    return head, {"positions": len(y), "accuracy": float((stops == y.bool()).float().mean()),
                  "stops_at_k": sum(c == k for c, k in zip(counts, ks)) / len(ks),
                  "stops_early": sum(c < k for c, k in zip(counts, ks)) / len(ks),
                  "mean_count": sum(counts) / len(counts)}, counts


def own_nmse(own: list, gold: list) -> list[float]:
    """Per layer 1..L, phi's own contemplation states against the gold ones (own[b], gold[b]: [n_b, L + 1, D], the
    same n_b positions): the normalised MSE of rlcomp/losses/ccot.py averaged over each row's positions, then over
    rows. 1 is what the mean state (each position's gold state averaged over its dimensions) scores."""
    import torch

    from rlcomp.losses.ccot import normalised_mse

    per_row = [normalised_mse(o.transpose(0, 1).float(), g.transpose(0, 1).float(), o.new_ones(o.shape[1], len(o)))
               for o, g in zip(own, gold) if len(o)]
    return [round(float(x), 4) for x in torch.stack(per_row).mean(0)[1:]]


def first_stop(stops) -> int:
    """How many positions phi contemplates given the head's stop flags: up to the first stop, else all of them."""
    return int(stops.nonzero()[0]) + 1 if stops.any() else len(stops)


def run(cfg: Config, run, model: str | None) -> str:
    from transformers import AutoConfig

    from rlcomp.batching import step_batches
    from rlcomp.latent import CCOT_SPEC_FILE, CONTEMPLATOR, END_HEAD
    from rlcomp.learner import LearnerGroup
    from rlcomp.losses.ccot import contemplate_batch, gold_batch
    from rlcomp.models import load_tokenizer
    from rlcomp.prompts import PromptRenderer

    if model is None:
        raise ValueError(f"stage {run.stage}: no input model (set `model`, or put a stage that makes one first)")
    tokenizer = load_tokenizer(model)
    pad = tokenizer.pad_token_id
    examples = load_examples(run.data(cfg.data), cfg.prompt)
    rows, counts = prepare(examples, tokenizer, PromptRenderer(tokenizer, cfg.prompt), cfg, run.stage)
    if len(rows) < cfg.batch_size:
        raise ValueError(f"stage {run.stage}: {len(rows)} usable examples are fewer than batch_size {cfg.batch_size} "
                         f"({counts['no_chain']} without a chain, {counts['too_long']} longer than max_length)")
    n_layers = AutoConfig.from_pretrained(model).num_hidden_layers
    layer = n_layers // 2 if cfg.layer is None else cfg.layer
    if layer > n_layers:
        raise ValueError(f"stage {run.stage}: layer {layer}: the model's hidden states are 0..{n_layers}")
    cap = cfg.cap or contemplations(200, cfg.r)  # the paper's ceil(200 r)
    ks = [row.k for row in rows]
    console.print(f"ccot: {len(rows)} examples, chains of {sum(len(r.chain) for r in rows) / len(rows):.1f} tokens, "
                  f"k = ceil({cfg.r} m): {sum(ks) / len(ks):.1f} contemplations on average (at most {max(ks)}; "
                  f"cap {cap}); feedback layer {layer} of {n_layers}")
    rng = random.Random(run.seed)

    def plan(length):
        while True:
            yield from step_batches(range(len(rows)), cfg.batch_size, "bucket", rng, length)

    started, summary = time.time(), {"layer": layer, "layers": n_layers, "r": cfg.r, "cap": cap, **counts,
                                     "mean_k": sum(ks) / len(ks), "phi": []}

    # phi, one layer at a time
    learner = cfg.learner.model_copy(update={"lora": cfg.phi_lora})
    total = n_layers * cfg.phi_steps_per_layer
    group = LearnerGroup(model, learner, cfg.optim, total_steps=total, seed=run.seed, name="phi learner")
    run.record_precision("phi learner", group.precision)
    n_micro = max(cfg.micro_batches or 0, group.world_size)
    if cfg.batch_size < n_micro:
        raise ValueError(f"stage {run.stage}: batch_size {cfg.batch_size} is smaller than {n_micro} micro-batches")
    batches, step = plan(lambda i: len(rows[i].prompt) + len(rows[i].chain)), 0
    with progress(f"ccot {run.stage}: phi", total) as bar:
        for j in range(1, n_layers + 1):
            group.train_layers([j - 1])
            losses = []
            for _ in range(cfg.phi_steps_per_layer):
                indices = next(batches)
                own = max(rows[i].k for i in indices) if cfg.phi_inputs == "own" else None
                mbs = [phi_batch([rows[i] for i in part], j, layer, pad, own) | {"step_sequences": len(indices)}
                       for part in deal(indices, n_micro)]
                metrics = group.train_step(mbs, "ccot_phi")
                losses.append(metrics["loss"])
                run.train_tokens += sum(len(rows[i].prompt) + len(rows[i].chain) for i in indices)
                if step % cfg.log_every == 0 or step == total - 1:
                    run.logger.log(run.stage, {**metrics, "phi_layer": j}, step)
                bar.advance(info=f"layer {j} nmse {metrics['loss']:.3f}")
                step += 1
            summary["phi"].append({"layer": j, "first_loss": losses[0], "last_loss": losses[-1]})

    # phi contemplates on every training prompt, past the gold k (to 2k or the cap), for the END head and psi
    window = [min(cap, 2 * row.k) for row in rows]
    states = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
    for start in range(0, len(order), cfg.batch_size):
        chunk = order[start : start + cfg.batch_size]
        parts = deal(chunk + chunk[-1:] * max(0, group.world_size - len(chunk)), group.world_size)
        steps = max(window[i] for i in chunk)  # the same passes on every rank
        mbs = [dict(zip(("input_ids", "attention_mask"), padded([rows[i].prompt for i in part], pad, left=True)),
                    feedback_layer=layer, ccot_steps=steps) for part in parts]
        for part, made in zip(parts, group.apply(contemplate_batch, mbs)):
            for b, i in enumerate(part):
                states[i] = made[b, : window[i]].clone()
    # How far phi's own contemplation is from the chain's states: the decoder can read only what phi makes.
    probe, gold = random.Random(run.seed + 1).sample(range(len(rows)), min(256, len(rows))), {}
    for start in range(0, len(probe), cfg.batch_size):
        chunk = probe[start : start + cfg.batch_size]
        parts = deal(chunk + chunk[-1:] * max(0, group.world_size - len(chunk)), group.world_size)
        mbs = [phi_batch([rows[i] for i in part], 0, layer, pad) for part in parts]
        for part, made in zip(parts, group.apply(gold_batch, mbs)):
            for b, i in enumerate(part):
                gold[i] = made[b, : min(rows[i].k, len(states[i]))]
    summary["phi_own_nmse"] = own_nmse([states[i][: len(g)] for i, g in gold.items()], list(gold.values()))
    console.print(f"ccot: phi contemplating on its own, normalised MSE against the gold states at layers 1..{n_layers} "
                  f"(the mean state: 1), on {len(gold)} training prompts: {summary['phi_own_nmse']}")
    contemplator = run.stage_dir() / CONTEMPLATOR
    group.save_model(contemplator)
    group.shutdown()
    shutil.rmtree(contemplator / "adapter", ignore_errors=True)

    finals = [s[:, -1] for s in states]
    head, summary["end_head"], stops = train_end_head(finals, ks, cfg.end_head_steps, cfg.end_head_hidden, run.seed)
    fit = summary["end_head"]
    console.print(f"ccot: END head on {fit['positions']} positions: accuracy {fit['accuracy']:.3f}, stops exactly "
                  f"at k on {fit['stops_at_k']:.0%} of the training prompts, before k on {fit['stops_early']:.0%}")
    # A decoder trained on exactly k positions fails where the head stops elsewhere (measured with psi reading the
    # vectors as input embeddings, r 0.5, 2-digit sums: 1.000 given each problem's k, 0.340 with the head), so by
    # default psi reads what inference gives it.
    counts = stops if cfg.psi_contemplation == "end_head" else ks
    # the inputs of the decoder layers that read phi's states (the last state is no layer's input)
    filled = n_layers if cfg.upper_layers == "phi" else min(layer + 1, n_layers)
    states = [s[:c, :filled].clone() for s, c in zip(states, counts)]
    del finals

    # psi: the answer after the contemplation positions, phi's states there at the layers it reads them
    learner = cfg.learner.model_copy(update={"lora": cfg.psi_lora})
    group = LearnerGroup(model, learner, cfg.optim, total_steps=cfg.psi_steps, seed=run.seed, name="psi learner")
    run.record_precision("psi learner", group.precision)
    batches, losses = plan(lambda i: len(rows[i].prompt) + counts[i] + len(rows[i].answer)), []
    with progress(f"ccot {run.stage}: psi", cfg.psi_steps) as bar:
        for step in range(cfg.psi_steps):
            indices = next(batches)
            targets = sum(len(rows[i].answer) for i in indices)
            mbs = [decode_batch([rows[i] for i in part], [states[i] for i in part], pad)
                   | {"step_target_tokens": targets} for part in deal(indices, n_micro)]
            metrics = group.train_step(mbs, "ccot_decode")
            losses.append(metrics["loss"])
            run.train_tokens += sum(len(rows[i].prompt) + counts[i] + len(rows[i].answer) for i in indices)
            if step % cfg.log_every == 0 or step == cfg.psi_steps - 1:
                run.logger.log(f"{run.stage}/psi", metrics, step)
            bar.advance(info=f"loss {metrics['loss']:.3f}")
    output = run.stage_dir() / "model"
    group.save_model(output)
    group.shutdown()
    shutil.move(str(contemplator), str(output / CONTEMPLATOR))
    head.save(output / END_HEAD)
    write_json(output / CCOT_SPEC_FILE, {"layer": layer, "r": cfg.r, "cap": cap}
               | ({"filled_layers": filled} if filled < n_layers else {}))
    summary["psi"] = {"steps": cfg.psi_steps, "first_loss": losses[0], "last_loss": losses[-1]}
    write_json(run.stage_dir() / "phases.json", summary)
    console.print(f"ccot: phi {total} steps over {n_layers} layers, psi {cfg.psi_steps} steps in "
                  f"{time.time() - started:.0f}s; the model contemplates up to {cap} positions before answering")
    return str(output)
