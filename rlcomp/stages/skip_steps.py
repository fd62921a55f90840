"""Stage `skip_steps`: learning to skip steps (Liu et al., NeurIPS'24; tengxiaoliu/LM_skip).

Prompts state the number of steps (`step_prompt`). Round 0 trains the input (base) model on the full-step
solutions, plus, with `warm_start`, hand-made solutions one step shorter (two adjacent steps merged, where the
task can write them; `warm_start_skips` adds more merged pairs). Each later round asks the previous round's
model, greedily, to solve every training problem in N-1 and N-2 steps (`skips`), keeps the answers that are right
in exactly the asked number of steps (fewer than N), and trains the next model from the **base** again on the
kept answers plus all the full-step data. With `standard`, each round also trains a model on the same data
without step counts in its prompts and evaluates it in domain (`eval_data`) and out of domain (`ood_data`): the
model the paper reports, and this stage's output. A step is a `step_separator`-ended part of a response (`;` in
the synthetic tasks, a line in the paper's format); the part after the last separator holds the answer. Rounds
that finished are kept on resume.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlcomp.data import TASKS, DataSpec, load_examples
from rlcomp.report import console, write_json, write_jsonl
from rlcomp.schema import check_engine, workers_resources
from rlcomp.stages import sft


class Config(sft.Config):
    type: Literal["skip_steps"] = "skip_steps"
    rounds: int = Field(3, ge=0)  # rounds after round 0 (the paper: 5)
    step_prompt: str = "{question}\nLet's solve it in {n} steps.\n"  # the paper's, less its "Answer:" line
    step_separator: str = ";"
    skips: list[int] = [1, 2]  # ask for N-1 and N-2 steps (each when at least one step is left)
    warm_start: bool = True  # round 0 also sees hand-made shorter solutions (the task's `chunked`)
    # how many steps shorter (each a number of merged pairs); the paper: one. [1, 2] also shows two pairs merged
    warm_start_skips: list[int] = [1]
    # Which two steps the warm start merges. Merged at a random place, each step is more likely unmerged: after 300
    # steps of training a greedy model asked for N-1 steps wrote all N; after 1500 it merges one pair (README).
    # "last": the step numbered n (the count asked for) does all that is left, two numbers in view.
    # "cancelling": a random pair of steps that cancel (direction: L R, R L, A A), as the paper's hand-made DR
    # data does (tengxiaoliu/LM_skip data/DR/train.jsonl); problems without such a pair get no shorter solution.
    warm_start_merge: Literal["first", "last", "random", "cancelling"] = "first"
    standard: bool = True  # per round, a model trained without step counts, evaluated in and out of domain
    eval_data: DataSpec | None = None  # in domain; default: the training task's test split, 500 problems
    ood_data: DataSpec | None = None  # out of domain (e.g. longer problems: `options: {digits: 5}`)
    max_tokens: int = Field(256, gt=0)
    workers: int = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))

    @field_validator("step_prompt")
    @classmethod
    def _names_question_and_n(cls, v: str) -> str:
        try:
            ok = v.format(question="\0", n="\1")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"step_prompt must be a format string using only {{question}} and {{n}}: {e!r}") from None
        if "\0" not in ok or "\1" not in ok:
            raise ValueError("step_prompt must hold both {question} and {n} (the number of steps asked for)")
        return v

    @model_validator(mode="after")
    def _warm_start_needs_a_synthetic_task(self):
        if self.warm_start and self.data.dataset not in TASKS:
            raise ValueError(f"warm_start: hand-made shorter solutions are written by the synthetic tasks "
                             f"({', '.join(sorted(TASKS))}), not {self.data.dataset or self.data.from_stage!r}; "
                             f"set warm_start: false")
        if self.warm_start and self.warm_start_merge == "cancelling" and not TASKS[self.data.dataset].has_cancelling:
            raise ValueError(f"warm_start_merge: cancelling: task {self.data.dataset!r} has no steps that cancel "
                             f"(direction has); set first, last or random")
        return self

    @field_validator("skips", "warm_start_skips")
    @classmethod
    def _positive(cls, v: list[int], info) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"{info.field_name} {v}: steps to skip, each at least 1")
        return v


def resources(cfg: Config) -> dict[str, float]:
    """Generation and training take turns: the larger of the two."""
    a, b = sft.resources(cfg), workers_resources(cfg.workers, 1, cfg.gpus_per_worker)
    return {k: max(a.get(k, 0), b.get(k, 0)) for k in a | b}


def count_steps(response: str, separator: str) -> int:
    """Steps of a response: its separator-ended parts (the rest holds the answer)."""
    return sum(1 for part in response.split(separator)[:-1] if part.strip())


def keep(correct: bool, steps: int, asked: int, full: int) -> bool:
    """The paper's filter: the answer is right, in exactly the asked number of steps, and fewer than the full N."""
    return correct and steps == asked and steps < full


def shorter_by(task, example, rng: random.Random, where: str = "first", by: int = 1) -> str | None:
    """A hand-made solution `by` steps shorter: `by` disjoint pairs of adjacent steps merged (the warm start): the
    first pairs, the last ones, pairs at random places, or pairs that cancel at random places (None where the
    solution has too few steps or too few such pairs)."""
    n, question = example.extra["n_steps"], example.extra.get("question", example.prompt)
    if n < 2 * by:
        return None
    if where == "cancelling":
        # every set of `by` cancelling pairs that do not overlap (one pair: a single choice among the pairs)
        ways = [c for c in itertools.combinations(task.cancelling(question), by)
                if all(b - a > 1 for a, b in zip(c, c[1:]))]
        if not ways:
            return None
        starts = rng.choice(ways)
    elif where == "random":  # uniform over placements: `by` of n - by slots, each pair widening the ones after it
        starts = [p + i for i, p in enumerate(sorted(rng.sample(range(n - by), by)))]
    else:
        starts = [2 * i if where == "first" else n - 2 - 2 * i for i in range(by)]
    sizes, i = [], 0
    while i < n:
        sizes.append(2 if i in starts else 1)
        i += sizes[-1]
    return task.chunked(question, sizes)


def asked(cfg: Config, example, n: int):
    return replace(example, prompt=cfg.step_prompt.format(question=example.prompt, n=n))


def run(cfg: Config, run, model: str | None) -> str:
    if model is None:
        raise ValueError(f"stage {run.stage}: no input model (the base every round is trained from)")
    train = load_examples(run.data(cfg.data), cfg.prompt)
    task = TASKS.get(cfg.data.dataset)
    sep = cfg.step_separator
    for e in train:
        e.extra |= {"n_steps": count_steps(e.response, sep), "plain_prompt": e.prompt}
    in_domain = cfg.eval_data or DataSpec(dataset=cfg.data.dataset, split="test", n=500, options=cfg.data.options)
    full = [asked(cfg, e, e.extra["n_steps"]) for e in train]
    rng = random.Random(run.seed)
    shorter = [(e, k, shorter_by(task, e, rng, cfg.warm_start_merge, k))
               for e in train for k in (cfg.warm_start_skips if cfg.warm_start else [])]
    data = full + [replace(asked(cfg, e, e.extra["n_steps"] - k), response=r)
                   for e, k, r in shorter if r is not None]
    rows_path = run.stage_dir() / "rounds.jsonl"
    done = [json.loads(line) for line in rows_path.read_text().splitlines()] if run.resume and rows_path.is_file() else []
    rows, previous = [], None
    for i in range(cfg.rounds + 1):
        if i < len(done):  # trained and evaluated before the run was interrupted
            rows.append(done[i])
        else:
            row = {"round": i}
            if i > 0:
                kept, row["generated"] = generate(cfg, run, previous, train)
                write_jsonl(run.stage_dir() / f"round{i}_kept.jsonl",  # the answers this round adds, to read
                            [{"prompt": e.prompt, "response": e.response, "answer": e.answer} for e in kept])
                data = full + kept
            row["train_examples"] = len(data)
            row["train_mean_steps"] = sum(count_steps(e.response, sep) for e in data) / len(data)
            sft.train(cfg, run, model, shuffled(data, run.seed + i), subdir=f"round{i}")
            if cfg.standard:
                plain = [replace(e, prompt=e.extra["plain_prompt"]) for e in data]
                standard = sft.train(cfg, run, model, shuffled(plain, run.seed + i), subdir=f"round{i}_standard")
                names = ["in_domain", "out_of_domain"] if cfg.ood_data else ["in_domain"]
                row |= dict(zip(names, evaluate(cfg, run, standard, [in_domain, cfg.ood_data][: len(names)])))
            rows.append(row)
            write_jsonl(rows_path, rows)
            console.print(f"skip_steps round {i}: {json.dumps(row)}")
        previous = str(run.stage_dir() / f"round{i}" / "model")
    write_json(run.stage_dir() / "summary.json", {"rounds": rows})
    return str(run.stage_dir() / f"round{cfg.rounds}_standard" / "model") if cfg.standard else previous


def shuffled(examples: list, seed: int) -> list:
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    return examples


def generate(cfg: Config, run, model: str, train: list) -> tuple[list, dict]:
    """The previous model asked for fewer steps on every training problem; the kept answers and their counts."""
    from rlcomp.rollout import RolloutGroup, SamplingParams
    from rlcomp.stages.eval import correctness

    asks = [(e, e.extra["n_steps"] - k) for e in train for k in cfg.skips if e.extra["n_steps"] - k >= 1]
    rollout = RolloutGroup(model, cfg.engine, cfg.workers, cfg.gpus_per_worker, seed=run.seed, prompt=cfg.prompt)
    run.record_precision(f"{rollout.engine} engine", rollout.precision)
    try:
        groups = rollout.generate([asked(cfg, e, n) for e, n in asks], SamplingParams(max_tokens=cfg.max_tokens))
    finally:
        rollout.shutdown()
    responses = [g[0].response for g in groups]
    right = correctness(cfg.data.default_verifier(), responses, [e.answer for e, _ in asks])
    # Per skip: whether the model answers in N-2 steps at all is what lets later rounds go further.
    kept, steps, by_skip = [], [], {f"n_minus_{k}": 0 for k in cfg.skips}
    for (e, n), r, ok in zip(asks, responses, right):
        if keep(ok >= 0.5, count_steps(r, cfg.step_separator), n, e.extra["n_steps"]):
            kept.append(replace(asked(cfg, e, n), response=r))
            steps.append(n)  # kept answers have exactly the asked number of steps
            by_skip[f"n_minus_{e.extra['n_steps'] - n}"] += 1
    return kept, {"asked": len(asks), "right": sum(x >= 0.5 for x in right), "kept": len(kept), "kept_by_skip": by_skip,
                  "kept_mean_steps": sum(steps) / len(steps) if steps else None}


def evaluate(cfg: Config, run, model: str, datasets: list[DataSpec]) -> list[dict]:
    """Greedy accuracy, mean steps and tokens of a standard model (asked the plain question), per data source."""
    from rlcomp.rollout import RolloutGroup
    from rlcomp.stages import eval as eval_stage

    rollout = RolloutGroup(model, cfg.engine, cfg.workers, cfg.gpus_per_worker, prompt=cfg.prompt)
    out = []
    try:
        for data in datasets:
            spec = eval_stage.Config(name=run.stage, data=data, max_tokens=cfg.max_tokens, workers=cfg.workers,
                                     gpus_per_worker=cfg.gpus_per_worker, engine=cfg.engine, prompt=cfg.prompt)
            result, samples = eval_stage.evaluate(spec, rollout)
            steps = [count_steps(s.response, cfg.step_separator) for s in samples]
            out.append({"accuracy": result["accuracy"], "mean_steps": sum(steps) / len(steps),
                        "mean_response_tokens": result["mean_response_tokens"], "n": result["n"]})
    finally:
        rollout.shutdown()
    return out
