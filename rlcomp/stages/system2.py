"""Stage `system2_distill`: Distilling System 2 into System 1 (Yu et al. 2024).

The input model answers each unlabelled question `n` times with its chain of thought (System 2); the final
answers are extracted and voted on. A question is kept when its majority answer reaches `threshold` of the
votes (self-consistency) and, with `perturb`, when the model's majority answer to a perturbed form of the
question (one that must have the same answer, e.g. the operands of a sum swapped) is the same. The model is then
fine-tuned to give the kept majority answer directly, with no chain (`answer_template`). Gold answers are never
read for the filter or the training data; they only score the filter afterwards (`filter_precision` in
summary.json), when the dataset has them.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from typing import Literal

from pydantic import Field, field_validator

from rlcomp.data import TASKS, load_examples
from rlcomp.prompts import PromptSpec, check_question_template
from rlcomp.report import console, write_json, write_jsonl
from rlcomp.schema import check_engine, workers_resources
from rlcomp.stages import sft


def swap_operands(prompt: str) -> str:
    """`347+285=` -> `285+347=` (also `*`): the same answer, asked another way (built-in for the synthetic tasks)."""
    swapped, n = re.subn(r"(\d+)\s*([+*])\s*(\d+)(\s*=)", r"\3\2\1\4", prompt)
    if n == 0:
        raise ValueError(f"perturb swap_operands: no `a+b=` or `a*b=` in the prompt {prompt[:80]!r}")
    return swapped


PERTURBATIONS = {"swap_operands": swap_operands}


class Config(sft.Config):
    type: Literal["system2_distill"] = "system2_distill"
    n: int = Field(8, gt=0)  # System-2 samples per question (the paper: 8-10 for CoT and RaR)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)
    threshold: float = Field(0.5, gt=0, le=1)  # the majority answer's share of the n votes needed to keep a question
    # A function (`file.py:function`, `module:function`, or built-in `swap_operands`) turning a prompt into
    # one with the same answer; the model's majority answer to it must agree.
    perturb: str | None = None
    answer_template: str = "ans {answer}"  # the System-1 response (the synthetic tasks' answer-only form)
    # The instruction around each question when sampling System 2 (e.g. "{question}\nPlease reason step by
    # step..."); the System-1 training prompts are the question as the stage's `prompt` words it. Default: both alike.
    system2_instruction: str | None = None
    workers: int = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))

    _check_instruction = field_validator("system2_instruction")(
        classmethod(lambda cls, v: check_question_template(v, "system2_instruction")))
    _check_answer = field_validator("answer_template")(
        classmethod(lambda cls, v: check_question_template(v, "answer_template", key="answer")))


def resources(cfg: Config) -> dict[str, float]:
    """Sampling finishes before training starts: the larger of the two."""
    a, b = sft.resources(cfg), workers_resources(cfg.workers, 1, cfg.gpus_per_worker)
    return {k: max(a.get(k, 0), b.get(k, 0)) for k in a | b}


def extractor(verifier: str):
    """The final answer of a response, as the dataset's verifier reads it."""
    from rlcomp.rewards.verifiers import after_hashes, extract_answer

    if verifier in TASKS:
        return TASKS[verifier].extract_answer
    if verifier == "gsm8k":
        return lambda text: (after_hashes(text) or extract_answer(text) or "").replace(",", "") or None
    return extract_answer


def vote(answers: list[str | None]) -> tuple[str | None, float]:
    """The most common answer (None when no response has one) and its share of all votes."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0.0
    answer, votes = counts.most_common(1)[0]
    return answer, votes / len(answers)


def perturbation(name: str):
    if name in PERTURBATIONS:
        return PERTURBATIONS[name]
    from rlcomp.rewards.registry import load_function

    return load_function(name)


def select(examples: list, votes: list[list[tuple]], cfg: Config) -> tuple[list[dict], list]:
    """Per question: its votes' row, and (if kept) the example answering the majority answer directly.
    votes[0][i] is question i's (majority, share); votes[1][i], if given, its perturbed form's."""
    from dataclasses import replace

    rows, kept = [], []
    for i, e in enumerate(examples):
        answer, share = votes[0][i]
        agrees = len(votes) == 1 or votes[1][i][0] == answer
        keep = answer is not None and share >= cfg.threshold and agrees
        rows.append({"id": e.id, "prompt": e.prompt, "majority": answer, "share": share, "kept": keep,
                     **({"perturbed_majority": votes[1][i][0]} if len(votes) > 1 else {}),
                     "level": e.extra.get("level")})
        if keep:
            kept.append(replace(e, response=cfg.answer_template.format(answer=answer)))
    return rows, kept


def run(cfg: Config, run, model: str | None) -> str:
    from dataclasses import replace

    from rlcomp.rollout import RolloutGroup, SamplingParams

    if model is None:
        raise ValueError(f"stage {run.stage}: no input model")
    examples = load_examples(run.data(cfg.data), cfg.prompt)
    extract = extractor(cfg.data.default_verifier())
    asks = [examples]
    if cfg.system2_instruction:
        spec = (cfg.prompt or PromptSpec()).model_copy(update={"instruction": cfg.system2_instruction})
        asks = [load_examples(run.data(cfg.data), spec)]
    if cfg.perturb:
        change = perturbation(cfg.perturb)
        asks.append([replace(e, prompt=change(e.prompt)) for e in asks[0]])
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                            seed=run.seed)
    rollout = RolloutGroup(model, cfg.engine, cfg.workers, cfg.gpus_per_worker, seed=run.seed, prompt=cfg.prompt)
    run.record_precision(f"{rollout.engine} engine", rollout.precision)
    try:
        votes = [[vote([extract(s.response) for s in g]) for g in rollout.generate(part, params)] for part in asks]
    finally:
        rollout.shutdown()
    rows, kept = select(examples, votes, cfg)
    write_jsonl(run.stage_dir() / "votes.jsonl", rows)
    # Scored against the gold answers only now, after the filter: how often the kept majority is right.
    summary = {"questions": len(examples), "kept": len(kept), "filter_precision": None}
    if kept and all(k.answer for k in kept):
        from rlcomp.stages.eval import correctness

        verdicts = correctness(cfg.data.default_verifier(), [k.response for k in kept], [k.answer for k in kept])
        summary["filter_precision"] = sum(verdicts) / len(kept)
        levels = sorted({str(e.extra.get("level")) for e in examples if e.extra.get("level") is not None})
        summary["by_level"] = {level: {
            "questions": sum(str(e.extra.get("level")) == level for e in examples),
            "kept": sum(str(k.extra.get("level")) == level for k in kept),
            "right": sum(v for k, v in zip(kept, verdicts) if str(k.extra.get("level")) == level)} for level in levels}
    precision = summary["filter_precision"]
    write_json(run.stage_dir() / "summary.json", summary)
    console.print(f"system2_distill: {len(kept)} of {len(examples)} questions kept (majority >= {cfg.threshold:g}"
                  f"{', perturbation agrees' if cfg.perturb else ''}); kept answers right: {precision}")
    if len(kept) < cfg.batch_size:
        raise ValueError(f"stage {run.stage}: {len(kept)} questions kept, fewer than batch_size {cfg.batch_size} "
                         f"(lower `threshold`, raise `n` or data.n)")
    random.Random(run.seed).shuffle(kept)
    return sft.train(cfg, run, model, kept)
