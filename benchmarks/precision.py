"""Training tokens/s in fp32 and in bf16 autocast on this machine, and which one `mixed_precision: auto` picks.

The quickstart's SFT step (verbose addition chains, batch 32, length-bucketed, AdamW) through the real
LearnerGroup, for two sizes of the embedded Qwen2: the quickstart's ~1.1M parameters (hidden 128) and
~17M (hidden 512). Each precision runs alternately (`--repeats`), the median run of each reported; then a group
with `auto` reports what it chose. On a processor without bf16 instructions bf16 is emulated and many times
slower; with AVX512-BF16/AMX it pays where matrix products dominate. Run it on a quiet machine.

    python benchmarks/precision.py [--steps 30] [--warmup 3] [--repeats 5] [--threads 2]
Writes benchmarks/results/precision.json and .md.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from transformers import AutoModelForCausalLM

from rlcomp.batching import micro_batches, step_batches, tokenize_examples
from rlcomp.cluster import init_ray
from rlcomp.config import LearnerConfig, OptimConfig
from rlcomp.data import get_task
from rlcomp.device import machine_info, machine_line
from rlcomp.learner import LearnerGroup
from rlcomp.models import count_parameters, load_tokenizer, make_tiny_model
from rlcomp.report import write_atomic, write_json

RESULTS = Path(__file__).parent / "results"
MODELS = [(128, 4), (512, 8)]  # (hidden, heads): the quickstart's model, and a 17M one


def measure(model: str, steps, precision: str, args) -> tuple[float, dict]:
    learner = LearnerConfig(num_workers=1, cpus_per_worker=args.threads, mixed_precision=precision)
    group = LearnerGroup(model, learner, OptimConfig(lr=3e-3), total_steps=len(steps))
    pad = load_tokenizer(model).pad_token_id
    tokens = 0
    for i, batch in enumerate(steps):
        if i == args.warmup:
            started = time.perf_counter()
        group.train_step(micro_batches(batch, 1, "bucket", pad), "sft")
        if i >= args.warmup:
            tokens += sum(len(ids) for ids, _ in batch)
    seconds = time.perf_counter() - started
    chosen = group.precision
    group.shutdown()
    return tokens / seconds, chosen


def verdict(row: dict) -> str:
    if row["faster"] == "tie":
        return "a tie: neither is faster here"
    return "the faster" if row["auto_not_slower"] else "NOT the faster"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps (a quarter of it for the 17M model)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    init_ray()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hidden, heads in MODELS:
            model = str(make_tiny_model(Path(tmp) / f"h{hidden}", hidden_size=hidden, num_heads=heads,
                                        intermediate_size=4 * hidden))
            timed = args.steps if hidden == 128 else max(2, args.steps // 4)
            examples = get_task("addition").generate((timed + args.warmup) * args.batch_size, cot="verbose")
            sequences = tokenize_examples(load_tokenizer(model), examples, max_length=512)
            steps = step_batches(sequences, args.batch_size, "bucket", random.Random(0))
            runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for _ in range(args.repeats):
                for precision in runs:
                    runs[precision].append(measure(model, steps, precision, args)[0])
            _, auto = measure(model, steps[: args.warmup + 1], "auto", args)
            medians = {p: statistics.median(v) for p, v in runs.items()}
            faster = max(medians, key=medians.get)
            slower = min(medians, key=medians.get)
            if min(runs[faster]) <= max(runs[slower]):  # the runs overlap: this machine cannot tell them apart
                faster = "tie"
            rows.append({"model": f"qwen2 hidden {hidden} ({count_parameters(AutoModelForCausalLM.from_pretrained(model)) / 1e6:.1f}M)",
                         "fp32_tokens_per_s": round(medians["fp32"]), "bf16_tokens_per_s": round(medians["bf16"]),
                         "bf16_vs_fp32": round(medians["bf16"] / medians["fp32"], 2),
                         "runs": {p: [round(v) for v in r] for p, r in runs.items()}, "faster": faster,
                         "auto": auto["used"], "native_bf16": auto["native_bf16"],
                         "auto_not_slower": faster in ("tie", auto["used"])})
    machine = machine_info(args.threads)
    write_json(RESULTS / "precision.json", {"benchmark": "precision", "machine": machine, "config": vars(args),
                                             "results": rows})
    lines = [f"Machine: {machine_line(machine)}", "",
             "| model | fp32 tokens/s | bf16 tokens/s | bf16 vs fp32 | faster | auto picked |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['fp32_tokens_per_s']} | {r['bf16_tokens_per_s']} | {r['bf16_vs_fp32']}x | "
              f"{r['faster']} | {r['auto']} ({verdict(r)}) |" for r in rows]
    lines += ["", f"Tokens/s: median of {args.repeats} runs each, fp32 and bf16 alternating; a tie when the "
                  "runs of the two overlap. `auto` is bf16 autocast where the device has native bf16 (here: "
                  f"{rows[0]['native_bf16']}), fp32 elsewhere."]
    table = "\n".join(lines) + "\n"
    write_atomic(RESULTS / "precision.md", table)
    print(table)


if __name__ == "__main__":
    main()
