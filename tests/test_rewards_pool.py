"""The killable verifier pool: hangs, crashes and hostile math all score 0, in order, and the pool carries on."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlcomp.rewards import verify
from rlcomp.rewards.pool import WorkerPool
from rlcomp.rewards.verifiers import run_verifier

FIXTURES = Path(__file__).parent / "fixtures" / "rewards"
HOSTILE = f"{FIXTURES / 'hostile.py'}:misbehave"
WARM_PROBE = f"{FIXTURES / 'hostile.py'}:math_verify_is_warm"


def test_each_kind_of_failure_scores_zero_and_is_counted():
    responses = ["a", "hang", "b", "segfault", "c", "exit", "d", "raise", "e", "memory", "f", "spin", "g"]
    golds = [r if len(r) == 1 else "x" for r in responses]
    start = time.monotonic()
    scores = verify(HOSTILE, responses, golds, timeout=1.0, workers=2)
    assert scores == [1.0, 0, 1.0, 0, 1.0, 0, 1.0, 0, 1.0, 0, 1.0, 0, 1.0]
    assert (scores.timeouts, scores.crashes, scores.errors) == (2, 2, 2)  # hang, spin / segfault, exit / raise, memory
    assert time.monotonic() - start < 2 * 1.0 / 2 + 15


def test_pool_recovers_and_is_reused_across_calls():
    with WorkerPool(run_verifier, workers=1, timeout=0.5) as pool:
        first = pool.map([(HOSTILE, "hang", "x", {}), (HOSTILE, "ok", "ok", {})])
        assert [o.status for o in first] == ["timeout", "ok"]
        done = []
        second = pool.map([(HOSTILE, "exit", "x", {}), (HOSTILE, "y", "y", {})], on_done=lambda i, o: done.append(i))
        assert [o.status for o in second] == ["crashed", "ok"] and second[1].value == 1.0
        assert sorted(done) == [0, 1]
        assert pool.map([]) == []


def test_a_small_batch_is_spread_over_the_workers():
    with WorkerPool(run_verifier, workers=2, timeout=5) as pool:
        pool.map([(HOSTILE, "warm", "up", {})] * 2)
        start = time.monotonic()
        outcomes = pool.map([(HOSTILE, "sleep 0.6", "x", {})] * 2)
        assert [o.status for o in outcomes] == ["ok", "ok"]
        assert time.monotonic() - start < 1.1  # side by side, not one queued behind the other


@pytest.mark.parametrize("verifier, warm", [("math", "1.0"), ("gsm8k", "0.0")])
def test_math_verify_workers_are_forked_warm(verifier, warm):
    # A fresh interpreter: the forkserver, and so what it preloads, is one per process.
    code = f"""
from rlcomp.rewards.verifiers import verifier_pool
with verifier_pool({verifier!r}, workers=1) as pool:
    print(pool.map([({WARM_PROBE!r}, "", "", {{}})])[0].value)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-1:] == [warm], out.stderr


def pathological() -> list[str]:
    return [
        r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",  # braces nested thousands deep
        r"\boxed{" + r"\frac{1}{" * 2000 + "2" + "}" * 2001,
        r"\boxed{" * 20000,
        "1" * 1_000_000,  # 1 MB strings
        "word " * 200_000 + r"\boxed{5}",
        r"\boxed{" + "x+" * 500_000 + "1}",
        r"\boxed{9^{9^{9^{9}}}}",  # power towers
        "The answer is 9^9^9^9",
        r"\boxed{2^{10^{10}}}",
        r"\boxed{100000000!}",  # huge factorials
        r"\boxed{(10^{10})!}",
        "\x00\x01\x1b[31m\\boxed{\x07\x00}\x7f",  # control characters
        "",  # empty strings
        "   ",
    ]


def test_pathological_mix_is_scored_in_full_in_order_within_the_time_bound():
    math = [json.loads(line) for line in (FIXTURES / "math_solutions.jsonl").read_text().splitlines()]
    ordinary = [(r["solution"], r["answer"], 1.0) for r in math] + [(math[0]["solution"], "123456", 0.0)]
    hostile = [(p, "1", 0.0) for p in pathological()]
    mixed = [item for pair in zip(ordinary, hostile) for item in pair] + ordinary[len(hostile):]
    timeout, workers = 1.0, 2
    start = time.monotonic()
    scores = verify("math", [r for r, _, _ in mixed], [g for _, g, _ in mixed], timeout=timeout, workers=workers)
    elapsed = time.monotonic() - start
    assert len(scores) == len(mixed)
    assert scores == [expected for _, _, expected in mixed]  # ordinary lines right, hostile ones 0, in order
    assert scores.timeouts > 0  # some really did hang
    assert elapsed < scores.timeouts * timeout / workers + 30
