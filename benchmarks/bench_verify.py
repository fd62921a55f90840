"""Verifications per second: one process verifying inline vs the RewardService (a Ray actor whose killable pool
has one worker per core it is given), on real answers and on real answers mixed with pathological ones.

Ordinary inputs: each MATH-500 solution against its own answer and against another problem's answer (a wrong
answer goes through sympy, as most RL samples do). The other problem is the next one in a shuffled cycle, not in
file order: there, item i's wrong gold (answer i+1) is item i+1's own final answer, so a single process verifying
in order finds it in math-verify's parse cache (20 entries), a neighbour effect of the file's order that RL
samples do not have and that hid about a third of the single process's work.

Every run uses fresh processes, as sympy and math-verify cache what they have seen and RL samples are new each
step; each starts with math-verify warmed up on a few unrelated answers (rlcomp.rewards.warm_up), as the
service's workers do. Runs are interleaved and the best of each setup counts, as the machine is shared.
Writes benchmarks/results/verify.json and verify.md.

    python benchmarks/bench_verify.py [--math ../shared/data/math500/test.jsonl] [--cpus 2]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import ray

from rlcomp.device import machine_info, machine_line
import rlcomp.rewards.warm_up  # noqa: F401  The forkserver imports __main__: single-process runs start warm too
from rlcomp.rewards import RewardSpec, start_reward_service
from rlcomp.rewards.files import atomic_write
from rlcomp.rewards.pool import WorkerPool
from rlcomp.rewards.verifiers import run_verifier
from rlcomp.sample import Sample

ROOT = Path(__file__).resolve().parent.parent
PATHOLOGICAL = [
    r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    r"\boxed{" + r"\frac{1}{" * 2000 + "2" + "}" * 2001,
    "1" * 1_000_000,
    r"\boxed{" + "x+" * 500_000 + "1}",
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{2^{10^{10}}}",
    r"\boxed{100000000!}",
    r"\boxed{(10^{10})!}",
    "\x00\x01\x1b[31m\\boxed{\x07}",
    "",
]


def ordinary_items(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cycle = list(range(len(rows)))
    random.Random(0).shuffle(cycle)
    wrong_gold = {i: rows[cycle[(k + 1) % len(cycle)]]["answer"] for k, i in enumerate(cycle)}
    own = [(r["solution"], r["answer"]) for r in rows]
    other = [(r["solution"], wrong_gold[i]) for i, r in enumerate(rows)]
    return own + other


def seconds_of(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def spin(n: int) -> int:
    """Pure-Python CPU work: run once per core, it shows how much parallelism the machine gives right now."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def inline_seconds(items: list[tuple[str, str]]) -> float:
    return seconds_of(lambda: [run_verifier("math", r, g, {}) for r, g in items])


def inline_processes_seconds(items: list[tuple[str, str]], processes: int) -> float:
    """Inline verification in fresh processes (forked like the service's workers, so with the same imports),
    each given an equal share of the items up front: no per-item traffic at all."""
    with WorkerPool(inline_seconds, workers=processes, timeout=3600) as pool:
        pool.map([([],)] * processes)  # fork them first
        return seconds_of(lambda: pool.map([(items[i::processes],) for i in range(processes)]))


def as_groups(items: list[tuple[str, str]], size: int = 8) -> list[list[Sample]]:
    samples = [Sample(prompt=str(i // size), response=r, answer=g) for i, (r, g) in enumerate(items)]
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def service_run(spec: RewardSpec, cpus: int, groups: list[list[Sample]]) -> tuple[float, list[list[Sample]], dict]:
    """(seconds, scored groups, outcome counts) of one score call on a fresh, started service."""
    service = start_reward_service(spec, num_cpus=cpus)
    ray.get(service.score.remote([[Sample("warm-up", r"\boxed{1}", "1")] * cpus]))  # actor and workers up
    start = time.perf_counter()
    scored = ray.get(service.score.remote(groups))
    seconds = time.perf_counter() - start
    counts = ray.get(service.counts.remote())
    ray.kill(service)
    return seconds, scored, counts


def accuracies(groups: list[list[Sample]]) -> list[float]:
    return [s.rewards["accuracy"] for g in groups for s in g]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--math", type=Path, default=ROOT.parent / "shared/data/math500/test.jsonl")
    parser.add_argument("--cpus", type=int, default=2, help="cores given to the service")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per verification")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    if not args.math.is_file():
        parser.error(f"--math {args.math}: no such file (MATH-500's test.jsonl, from the project's shared/data)")

    ordinary = ordinary_items(args.math)
    mixed = ordinary + [(p, "1") for p in PATHOLOGICAL]
    n = len(ordinary)
    spec = RewardSpec(verifier="math", timeout=args.timeout)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.cpus, _node_ip_address="127.0.0.1", include_dashboard=False)
    spinners = WorkerPool(spin, workers=args.cpus, timeout=600)
    spin_work = [(8_000_000,)] * args.cpus
    spinners.map(spin_work)

    seconds = {"single": [], "service": [], "split": [], "spin_serial": [], "spin_parallel": []}
    for _ in range(args.repeats):
        seconds["spin_serial"].append(seconds_of(lambda: [spin(*work) for work in spin_work]))
        seconds["spin_parallel"].append(seconds_of(lambda: spinners.map(spin_work)))
        seconds["single"].append(inline_processes_seconds(ordinary, 1))
        seconds["split"].append(inline_processes_seconds(ordinary, args.cpus))
        service_seconds, scored, _ = service_run(spec, args.cpus, as_groups(ordinary))
        seconds["service"].append(service_seconds)
    spinners.close()
    ceiling = min(seconds["spin_serial"]) / min(seconds["spin_parallel"])
    single, service_rate, split = (n / min(seconds[k]) for k in ("single", "service", "split"))
    expected = [run_verifier("math", r, g, {}) for r, g in ordinary]
    agree = accuracies(scored) == expected

    mixed_seconds, scored_mixed, counts = service_run(spec, args.cpus, as_groups(mixed))
    timeouts = counts.get("timeout", 0)
    mixed_ok = accuracies(scored_mixed) == expected + [0.0] * len(PATHOLOGICAL)
    ray.shutdown()

    result = {
        "machine": machine_info(threads=args.cpus),
        "ordinary_items": len(ordinary), "pathological_items": len(PATHOLOGICAL), "timeout_s": args.timeout,
        "seconds": {k: [round(t, 3) for t in v] for k, v in seconds.items()},
        "single_process_per_s": round(single, 1),
        "service_per_s": round(service_rate, 1),
        "service_speedup": round(service_rate / single, 2),
        "machine_parallel_ceiling": round(ceiling, 2),
        "split_inline_per_s": round(split, 1),
        "split_inline_speedup": round(split / single, 2),
        "service_matches_single_process": agree,
        "mixed_per_s": round(len(mixed) / mixed_seconds, 1),
        "mixed_seconds": round(mixed_seconds, 2),
        "mixed_timeouts": timeouts,
        "mixed_bound_s": round(timeouts * args.timeout / args.cpus + 30, 1),
        "mixed_ordinary_right": mixed_ok,
    }
    table = "\n".join([
        f"Machine: {machine_line(result['machine'])} (service workers)",
        "",
        f"Verifications per second, `math` verifier, {len(ordinary)} MATH-500 answers "
        f"(half right, half wrong); service on {args.cpus} cores; fresh processes each run; best of {args.repeats}.",
        "",
        "| setup | verifications/s | vs single process |",
        "| --- | ---: | ---: |",
        f"| single process, inline (no timeout protection) | {single:.0f} | 1.00x |",
        f"| RewardService (Ray actor, {args.cpus} workers) | {service_rate:.0f} | {service_rate / single:.2f}x |",
        f"| (ceiling: {args.cpus} inline processes, items split up front) | {split:.0f} | {split / single:.2f}x |",
        f"| (machine check: pure-Python loop on {args.cpus} processes) | | {ceiling:.2f}x |",
        f"| RewardService, + {len(PATHOLOGICAL)} pathological (timeout {args.timeout:g} s) | "
        f"{len(mixed) / mixed_seconds:.0f} | {len(mixed) / mixed_seconds / single:.2f}x |",
        "",
        f"Mixed run: {mixed_seconds:.1f} s with {timeouts} timeouts (bound: timeouts x timeout / workers + 30 s = "
        f"{result['mixed_bound_s']} s); every answer scored as expected, in order: {mixed_ok}. "
        "Inline scoring cannot run the pathological answers at all: they hang. "
        "The two ceiling rows are what the shared machine gave in the same minutes: the verification work "
        "itself split over the cores with no coordination, and a plain CPU loop.",
        "",
    ])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out_dir / "verify.json") as f:
        json.dump(result, f, indent=2)
    with atomic_write(args.out_dir / "verify.md") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
