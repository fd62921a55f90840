"""Seconds per GRPO step: rlcomp vs TRL's GRPOTrainer on the same tiny model, data, group size, batch and length.

Both sides train the embedded ~1.1M-parameter Qwen2 (one model directory, random weights) on the verbose
addition task with the same reward (the addition checker), `prompts` x `generations` completions of at most
`max_tokens` new tokens per step, temperature 1.0, one optimizer step per rollout batch, no KL (beta=0), the same
training precision (rlcomp's `auto`: bf16 autocast where the CPU has native bf16, else fp32; TRL's `bf16` set alike),
no activation checkpointing (TRL's default turns it on: switched off here for fairness). rlcomp runs through its
real pipeline (`run_recipe` with one `rl` stage: Ray rollout workers with HF generate, the reward service, an
FSDP2 learner group, by default 2 ranks x 1 thread); TRL runs GRPOTrainer with use_cpu=True, use_vllm=False,
in one process. Both sides use the same number of CPU threads in all. Each run is a fresh subprocess; runs
alternate between the sides (`--repeats`) and each side's median run is reported; warm-up steps are dropped. A random model stops
at EOS at random, so the mean completion length of each side is reported next to its time. Run it on a quiet
machine: with other processes on the cores, multi-threaded torch ops stall on their thread barriers (a 2-thread
generate was 50x slower than a 1-thread one under load), which would distort the comparison.

    python benchmarks/grpo_vs_trl.py [--steps 10] [--warmup 2] [--prompts 16] [--generations 8] [--max-tokens 128]
                                     [--repeats 3] [--learner-workers 2]
Writes benchmarks/results/grpo_vs_trl.json and .md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from rlcomp.device import machine_info, machine_line, resolve_precision
from rlcomp.report import write_atomic, write_json

RESULTS = Path(__file__).parent / "results"
PRECISION = resolve_precision("auto", "cpu")["used"]  # what rlcomp's learners pick here; TRL is given the same


def examples(args):
    from rlcomp.data import get_task

    # The same examples rlcomp's `data: {dataset: addition, n: N}` loads (split train, seed 0, verbose CoT).
    return get_task("addition").generate(args.prompts * (args.warmup + args.steps), "train", 0, "verbose")


def run_rlcomp(args) -> dict:
    from rlcomp.config import validate_recipe
    from rlcomp.pipeline import run_recipe

    stage = {
        "name": "grpo", "type": "rl", "algorithm": {"type": "grpo", "kl_coef": 0.0},
        "data": {"dataset": "addition", "n": args.prompts * (args.warmup + args.steps), "cot": "verbose"},
        "reward": {"verifier": "auto", "parts": [{"name": "accuracy"}]},
        "rollout": {"engine": "hf", "workers": args.rollout_workers, "n": args.generations, "temperature": 1.0,
                    "max_tokens": args.max_tokens},
        "prompts_per_step": args.prompts, "max_steps": args.warmup + args.steps, "updates_per_step": 1,
        "optim": {"lr": args.lr, "schedule": "constant"},
        "learner": {"num_workers": args.learner_workers, "cpus_per_worker": args.threads / args.learner_workers,
                    "mixed_precision": "auto", "gradient_checkpointing": False},
    }
    recipe = validate_recipe({"model": args.model, "seed": 0, "cluster": {"num_cpus": max(8, args.threads)},
                              "stages": [stage]})
    with tempfile.TemporaryDirectory() as out:
        run_recipe(recipe, out)
        rows = [json.loads(line) for line in (Path(out) / "stages" / "grpo" / "steps.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["step"] > args.warmup]
    phases = {name: mean(r[f"time/{name}"] for r in rows) for name in ("rollout", "reward", "train", "sync")}
    return {
        "framework": "rlcomp",
        "layout": f"{args.rollout_workers} HF rollout worker(s) x 1 thread, {args.learner_workers} FSDP2 learner "
                  f"rank(s) x {args.threads / args.learner_workers:g} threads, reward service; {PRECISION}",
        "seconds_per_step": sum(phases.values()),
        "phases": phases,
        "mean_completion_tokens": mean(r["response_length/mean"] for r in rows),
        "accuracy": mean(r["accuracy"] for r in rows),
        "measured_steps": len(rows),
    }


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlcomp.data import get_task
    from rlcomp.models import load_tokenizer

    torch.set_num_threads(args.threads)
    task = get_task("addition")
    data = examples(args)
    dataset = Dataset.from_dict({"prompt": [e.prompt for e in data], "answer": [e.answer for e in data]})
    lengths, correct = [], []

    def accuracy(prompts, completions, answer, completion_ids=None, **kw) -> list[float]:
        scores = [float(task.check(c, a)) for c, a in zip(completions, answer)]
        lengths.append(mean(len(ids) for ids in completion_ids))
        correct.append(mean(scores))
        return scores

    batch = args.prompts * args.generations
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=PRECISION == "bf16", use_vllm=False, gradient_checkpointing=False,
            per_device_train_batch_size=batch, gradient_accumulation_steps=1, generation_batch_size=batch,
            num_generations=args.generations, max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0,
            top_k=0, learning_rate=args.lr, lr_scheduler_type="constant", adam_beta2=0.95, max_grad_norm=1.0,
            beta=0.0, num_iterations=1, max_steps=args.warmup + args.steps, logging_steps=1, report_to=[],
            save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )
        timer = StepTimer()
        trainer = GRPOTrainer(model=args.model, reward_funcs=accuracy, args=config, train_dataset=dataset,
                              processing_class=load_tokenizer(args.model), callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # TRL's per-step log dicts: not needed here
        for name, method in (("generate", "_generate"), ("reward", "_calculate_rewards"),
                             ("generate_and_score", "_generate_and_score_completions"),
                             ("loss_forward", "compute_loss")):
            setattr(trainer, method, timer.wrap(name, getattr(trainer, method)))
        trainer.train()
    steps = timer.steps[args.warmup:]
    phases = {
        "generate": mean(s["generate"] for s in steps),
        "reward": mean(s["reward"] for s in steps),
        "other_scoring": mean(s["generate_and_score"] - s["generate"] - s["reward"] for s in steps),
        "loss_forward": mean(s["loss_forward"] for s in steps),
        "backward_optimizer": mean(s["step"] - s["generate_and_score"] - s["loss_forward"] for s in steps),
    }
    return {
        "framework": "trl",
        "layout": f"GRPOTrainer (TRL {__import__('trl').__version__}) in one process, {timer.threads} torch threads, "
                  f"HF generate, {PRECISION}, gradient_checkpointing=False",
        "seconds_per_step": mean(s["step"] for s in steps),
        "phases": phases,
        "mean_completion_tokens": mean(lengths[args.warmup:]),
        "accuracy": mean(correct[args.warmup:]),
        "measured_steps": len(steps),
    }


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


class StepTimer(TrainerCallback):
    """Times each optimizer step (on_step_begin -> on_step_end), plus wrapped methods called inside it."""

    def __init__(self):
        self.steps, self.current, self.started, self.threads = [], {}, 0.0, 0

    def wrap(self, name, method):
        def timed(*a, **kw):
            started = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - started
        return timed

    def on_step_begin(self, args, state, control, **kw):
        import torch

        self.threads = torch.get_num_threads()  # as the trainer left it (reported in the layout)
        self.current, self.started = {}, time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.current["step"] = time.perf_counter() - self.started
        self.steps.append({"generate": 0.0, "reward": 0.0, "generate_and_score": 0.0, "loss_forward": 0.0,
                           **self.current})


def side(args, name: str, model: str, tmp: Path) -> dict:
    """Run one framework in a fresh Python process (no Ray or torch state shared with the other)."""
    result = tmp / f"{name}.json"
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", name, "--model", model,
                    "--result-file", str(result)], check=True)
    return json.loads(result.read_text())


def report(args, rows: list[dict]) -> str:
    by = {r["framework"]: r for r in rows}
    ours, trl = by["rlcomp"], by["trl"]
    for r in rows:
        tokens = args.prompts * args.generations * r["mean_completion_tokens"]
        r["completion_tokens_per_s"] = tokens / r["seconds_per_step"]
    ratio = trl["seconds_per_step"] / ours["seconds_per_step"]
    faster, slower = (ours, trl) if ratio >= 1 else (trl, ours)
    speedup = max(ratio, 1 / ratio)

    def shares(r):
        return ", ".join(f"{k} {100 * v / r['seconds_per_step']:.0f}%"
                         for k, v in sorted(r["phases"].items(), key=lambda kv: -kv[1]))

    note = (f"{faster['framework']} is {speedup:.2f}x faster than {slower['framework']} "
            f"({faster['seconds_per_step']:.2f} s vs {slower['seconds_per_step']:.2f} s per step; completion-length-"
            f"normalised {faster['completion_tokens_per_s'] / slower['completion_tokens_per_s']:.2f}x in tokens/s). "
            f"rlcomp's step: {shares(ours)}. TRL's step: {shares(trl)}.")
    machine = machine_info(args.threads)
    lines = [f"Machine: {machine_line(machine)} per side; training precision {PRECISION}", "",
             f"GRPO, {args.prompts} prompts x {args.generations} generations, max {args.max_tokens} new tokens, "
             f"{args.steps} measured steps after {args.warmup} warm-up, {args.threads} CPU threads per side; "
             f"{args.repeats} runs per side, interleaved, the median run shown.", "",
             "| framework | s/step (median run) | s/step, every run | mean completion tokens | completion tokens/s "
             "| accuracy | layout |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['framework']} | {r['seconds_per_step']:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in r['all_seconds_per_step'])} | {r['mean_completion_tokens']:.1f} | "
              f"{r['completion_tokens_per_s']:.0f} | {r['accuracy']:.3f} | {r['layout']} |" for r in rows]
    lines += ["", "| framework | phase | s/step | share |", "|---|---|---|---|"]
    lines += [f"| {r['framework']} | {k} | {v:.3f} | {100 * v / r['seconds_per_step']:.0f}% |"
              for r in rows for k, v in r["phases"].items()]
    lines += ["", f"Note: {note}", ""]
    write_json(RESULTS / "grpo_vs_trl.json", {"benchmark": "grpo_vs_trl", "machine": machine, "precision": PRECISION,
                                              "config": vars(args), "results": rows,
                                              "speedup_rlcomp_vs_trl": round(ratio, 3), "note": note})
    table = "\n".join(lines)
    write_atomic(RESULTS / "grpo_vs_trl.md", table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads each side may use")
    parser.add_argument("--rollout-workers", type=int, default=2, help="rlcomp: HF rollout workers, 1 thread each")
    parser.add_argument("--learner-workers", type=int, default=2, help="rlcomp: learner ranks sharing --threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved; the median counts")
    parser.add_argument("--side", choices=["rlcomp", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = (run_rlcomp if args.side == "rlcomp" else run_trl)(args)
        write_json(args.result_file, result)
        return
    from rlcomp.models import make_tiny_model

    runs: dict[str, list[dict]] = {"rlcomp": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_tiny_model(Path(tmp) / "model"))
        for _ in range(args.repeats):  # interleaved, so a noisy minute hits both sides alike
            for name in runs:
                runs[name].append(side(args, name, model, Path(tmp)))
    rows = []
    for name, results in runs.items():  # each side's median run, with every run's s/step alongside
        results.sort(key=lambda r: r["seconds_per_step"])
        rows.append({**results[len(results) // 2], "all_seconds_per_step": [r["seconds_per_step"] for r in results]})
    config = {k: v for k, v in vars(args).items() if k not in ("side", "model", "result_file")}
    print(report(argparse.Namespace(**config), rows))


if __name__ == "__main__":
    main()
