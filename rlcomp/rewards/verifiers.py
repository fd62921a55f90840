"""Answer verifiers: find the final answer in a response and compare it with the gold answer.

A verifier is a plain function `(response, gold, **options) -> float` in [0, 1]. Some can hang or eat memory on
hostile input (math-verify runs sympy), so `verify()` and the reward service run them in a killable worker
pool (`pool.py`) with a wall-clock limit per item; call them inline only on trusted input.
"""
from __future__ import annotations

import logging
import math
import re
from fractions import Fraction
from functools import partial
from typing import Callable

from math_verify import parse, verify as math_verify

from rlcomp.rewards.pool import Outcome, WorkerPool
from rlcomp.rewards.registry import load_function

# We disable math-verify's own SIGALRM timeouts (they break outside a main thread); the pool is the timeout.
logging.getLogger("math_verify").setLevel(logging.ERROR)

DEFAULT_TIMEOUT = 5.0  # seconds per item: math-verify's own defaults are 5 s for parsing and for comparing

# ---------------------------------------------------------------------------------------------- extraction

_BOX_OR_BRACE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
_ANSWER_PHRASE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is\s*:?|final\s+answer\s*:|^\s*A\s*:)", re.I | re.M)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def boxed(text: str, which: str = "last") -> str | None:
    """The content of the last (or first) complete `\\boxed{...}`, braces matched; None if there is none.

    One pass over the braces with a stack, so text nested thousands deep or megabytes long costs linear time.
    """
    spans = []  # (start, end) of each complete box's content
    stack = []  # for each open brace: where its box content starts, or None for a plain brace
    for m in _BOX_OR_BRACE.finditer(text):
        if m.group() == "}":
            if stack:
                start = stack.pop()
                if start is not None:
                    spans.append((start, m.start()))
        else:
            stack.append(m.end() if m.group() != "{" else None)
    if not spans:
        return None
    start, end = min(spans) if which == "first" else max(spans)
    return text[start:end].strip()


def answer_after_phrase(text: str) -> str | None:
    """The rest of the line after the last "The answer is" / "Final answer:" / "A:", or None."""
    last = None
    for last in _ANSWER_PHRASE.finditer(text):
        pass
    if last is None:
        return None
    answer = text[last.end():].split("\n", 1)[0].strip().strip("$").strip()
    answer = answer.rstrip(".").strip().strip("$").strip()
    return answer or None


def last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER.finditer(_THOUSANDS_COMMA.sub("", text)):
        pass
    return last.group() if last else None


def extract_answer(text: str, box: str = "last", phrases: bool = True, number_fallback: bool = True) -> str | None:
    """The final answer of a response: a `\\boxed{}` (last or first), else an answer phrase, else the last number."""
    answer = boxed(text, box)
    if answer is None and phrases:
        answer = answer_after_phrase(text)
    if answer is None and number_fallback:
        answer = last_number(text)
    return answer


def to_number(text: str | None) -> Fraction | None:
    """The first number in `text` as an exact fraction ("$1,000.50" -> 2001/2, "18 dollars" -> 18, "5%" -> 5)."""
    if text is None:
        return None
    m = _NUMBER.search(_THOUSANDS_COMMA.sub("", text))
    if m is None:
        return None
    try:
        return Fraction(m.group())
    except (ValueError, ZeroDivisionError):  # "1/0"
        return None


# ----------------------------------------------------------------------------------------------- verifiers


def _normalize(answer: str) -> str:
    return re.sub(r"\s+", "", answer).strip("$").rstrip(".")  # a final period, never a leading one (".5")


def math_verifier(response: str, gold: str, box: str = "last", phrases: bool = True,
                  number_fallback: bool = True) -> float:
    """Math answers compared by math-verify (sympy): `\\frac12`, `0.5` and `1/2` agree."""
    pred = extract_answer(response, box, phrases, number_fallback)
    if pred is None:
        return 0.0
    if _normalize(pred) == _normalize(gold):  # the common case, and text answers sympy cannot parse
        return 1.0
    # math-verify wants LaTeX inside a math environment; `verify` takes the gold first.
    gold_parsed = parse(f"${gold.strip().strip('$')}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred.strip('$')}$", parsing_timeout=None)
    return float(math_verify(gold_parsed, pred_parsed, timeout_seconds=None))


def after_hashes(text: str) -> str | None:
    """What follows the last `####` (GSM8K's answer marker), or None."""
    _, sep, tail = text.rpartition("####")
    return tail.strip() if sep else None


def gsm8k_verifier(response: str, gold: str) -> float:
    """The number after `####` (else a box, an answer phrase, the last number) equals the gold number."""
    expected = to_number(after_hashes(gold) or gold)
    found = after_hashes(response)
    got = to_number(found) if found else to_number(extract_answer(response))
    return float(expected is not None and got == expected)


def exact_verifier(response: str, gold: str, ignore_case: bool = False) -> float:
    """The extracted answer (a box or an answer phrase; else the whole response) equals the gold string."""
    pred = extract_answer(response, number_fallback=False) or response.strip()
    if ignore_case:
        pred, gold = pred.lower(), gold.lower()
    return float(pred == gold.strip())


def numeric_verifier(response: str, gold: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> float:
    """The extracted answer is a number within tolerance of the gold number."""
    got, expected = to_number(extract_answer(response)), to_number(gold)
    if got is None or expected is None:
        return 0.0
    return float(math.isclose(float(got), float(expected), rel_tol=rel_tol, abs_tol=abs_tol))


def task_verifier(task: str, response: str, gold: str) -> float:
    """A synthetic task's own checker (imported lazily: rlcomp.data may load after this module)."""
    from rlcomp.data import get_task

    return float(get_task(task).check(response, gold))


VERIFIERS: dict[str, Callable[..., float]] = {
    "math": math_verifier,
    "gsm8k": gsm8k_verifier,
    "exact": exact_verifier,
    "numeric": numeric_verifier,
    **{task: partial(task_verifier, task) for task in ("addition", "multiplication", "direction", "mixed_addition")},
}


def get_verifier(name: str) -> Callable[..., float]:
    if name in VERIFIERS:
        return VERIFIERS[name]
    if ":" in name:
        return load_function(name)
    raise KeyError(f"unknown verifier {name!r}; known: {sorted(VERIFIERS)} or `module:function`")


def run_verifier(name: str, response: str, gold: str, options: dict) -> float:
    """What a pool worker runs for one item: the named verifier, its score clamped into [0, 1]."""
    return min(1.0, max(0.0, float(get_verifier(name)(response, gold, **options))))


# ----------------------------------------------------------------------------------------------- entry point


class Scores(list):
    """Scores in input order, plus how many items timed out, raised, or crashed their worker (all scored 0)."""

    def __init__(self, outcomes: list[Outcome]):
        super().__init__(o.value if o.status == "ok" else 0.0 for o in outcomes)
        self.timeouts = sum(o.status == "timeout" for o in outcomes)
        self.errors = sum(o.status == "error" for o in outcomes)
        self.crashes = sum(o.status == "crashed" for o in outcomes)


def verifier_pool(verifier: str, workers: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> WorkerPool:
    """A pool of workers running `run_verifier`; for math-verify they are forked warm (see warm_up.py)."""
    preload = ["rlcomp.rewards.warm_up"] if verifier in ("math", "auto") else []
    return WorkerPool(run_verifier, workers=workers, timeout=timeout, preload=preload)


def verify(verifier: str, responses: list[str], golds: list[str], timeout: float = DEFAULT_TIMEOUT,
           workers: int | None = None, **options) -> Scores:
    """Score responses against gold answers in a killable process pool; a timeout or crash scores 0."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    get_verifier(verifier)  # fail here, not once per item in the workers
    with verifier_pool(verifier, workers, timeout) as pool:
        return Scores(pool.map([(verifier, r, g, options) for r, g in zip(responses, golds)]))
