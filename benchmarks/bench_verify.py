"""Verifications per second: one process verifying inline vs the RewardService (a Ray actor whose killable pool
has one worker per core it is given), on real answers and on real answers mixed with pathological ones.

Ordinary inputs: each MATH-500 solution against its own answer and against the next problem's answer (a wrong
answer goes through sympy, as most RL samples do). Writes benchmarks/results/verify.json and verify.md.

    python benchmarks/bench_verify.py [--math ../shared/data/math500/test.jsonl] [--cpus 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import ray

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
    own = [(r["solution"], r["answer"]) for r in rows]
    other = [(r["solution"], rows[(i + 1) % len(rows)]["answer"]) for i, r in enumerate(rows)]
    return own + other


def best_seconds(run, repeats: int) -> float:
    """Wall time of the fastest of `repeats` runs (the machine is shared: the best run is the least disturbed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def as_groups(items: list[tuple[str, str]], size: int = 8) -> list[list[Sample]]:
    samples = [Sample(prompt=str(i // size), response=r, answer=g) for i, (r, g) in enumerate(items)]
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--math", type=Path, default=ROOT.parent / "shared/data/math500/test.jsonl")
    parser.add_argument("--cpus", type=int, default=2, help="cores given to the service")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per verification")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()

    ordinary = ordinary_items(args.math)
    mixed = ordinary + [(p, "1") for p in PATHOLOGICAL]
    inline_scores = [run_verifier("math", r, g, {}) for r, g in ordinary]  # also warms caches
    n = len(ordinary)
    single = n / best_seconds(lambda: [run_verifier("math", r, g, {}) for r, g in ordinary], args.repeats)

    with WorkerPool(run_verifier, workers=1, timeout=args.timeout) as pool:
        pool_items = [("math", r, g, {}) for r, g in ordinary]
        pool.map(pool_items[:10])  # start the worker
        pool1 = n / best_seconds(lambda: pool.map(pool_items), args.repeats)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.cpus, _node_ip_address="127.0.0.1", include_dashboard=False)
    spec = RewardSpec(verifier="math", timeout=args.timeout)
    service = start_reward_service(spec, num_cpus=args.cpus)
    ray.get(service.score.remote(as_groups(ordinary[:20])))  # start the actor and its workers
    ordinary_groups = as_groups(ordinary)
    service_rate = n / best_seconds(lambda: ray.get(service.score.remote(ordinary_groups)), args.repeats)
    scored = ray.get(service.score.remote(ordinary_groups))
    agree = [s.rewards["accuracy"] for g in scored for s in g] == inline_scores

    before = ray.get(service.counts.remote())
    start = time.perf_counter()
    scored_mixed = ray.get(service.score.remote(as_groups(mixed)))
    mixed_seconds = time.perf_counter() - start
    after = ray.get(service.counts.remote())
    timeouts = after.get("timeout", 0) - before.get("timeout", 0)
    mixed_ok = [s.rewards["accuracy"] for g in scored_mixed for s in g][:len(ordinary)] == inline_scores
    ray.shutdown()

    result = {
        "machine": {"cpus_visible": os.cpu_count(), "service_cpus": args.cpus, "python": platform.python_version(),
                    "platform": platform.platform()},
        "ordinary_items": len(ordinary), "pathological_items": len(PATHOLOGICAL), "timeout_s": args.timeout,
        "single_process_per_s": round(single, 1),
        "pool_1_worker_per_s": round(pool1, 1),
        "service_per_s": round(service_rate, 1),
        "service_speedup": round(service_rate / single, 2),
        "service_matches_single_process": agree,
        "mixed_per_s": round(len(mixed) / mixed_seconds, 1),
        "mixed_seconds": round(mixed_seconds, 2),
        "mixed_timeouts": timeouts,
        "mixed_bound_s": round(timeouts * args.timeout / args.cpus + 30, 1),
        "mixed_ordinary_right": mixed_ok,
    }
    table = "\n".join([
        f"Verifications per second, `math` verifier, {len(ordinary)} MATH-500 answers "
        f"(half right, half wrong); service on {args.cpus} cores; best of {args.repeats}.",
        "",
        "| setup | verifications/s | vs single process |",
        "| --- | ---: | ---: |",
        f"| single process, inline (no timeout protection) | {single:.0f} | 1.00x |",
        f"| killable pool, 1 worker | {pool1:.0f} | {pool1 / single:.2f}x |",
        f"| RewardService (Ray actor, {args.cpus} workers) | {service_rate:.0f} | {service_rate / single:.2f}x |",
        f"| RewardService, + {len(PATHOLOGICAL)} pathological (timeout {args.timeout:g} s) | "
        f"{len(mixed) / mixed_seconds:.0f} | {len(mixed) / mixed_seconds / single:.2f}x |",
        "",
        f"Mixed run: {mixed_seconds:.1f} s with {timeouts} timeouts (bound: timeouts x timeout / workers + 30 s = "
        f"{result['mixed_bound_s']} s); ordinary answers scored as inline: {mixed_ok}. "
        "Inline scoring cannot run the pathological answers at all: they hang.",
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
