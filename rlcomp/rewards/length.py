"""Length rewards of the chain-compression papers, as pure functions, and the accuracy-efficiency score AES.

Formulas are those of ../shared/METHODS.md (paper form by default). Lengths are response lengths (tokens);
`correct` is the verifier's verdict. Per-sample rewards take scalars; rewards that compare the samples of
one prompt take that group's lists and return a list.
"""
from __future__ import annotations

import math
from statistics import fmean, pstdev


def _clip(x: float, bounds: tuple[float, float] | None) -> float:
    return x if bounds is None else min(max(x, bounds[0]), bounds[1])


def o1_pruner(length: int, accuracy: float, ref_length: float, ref_accuracy: float, lam: float = 2.0,
              clip_length: tuple[float, float] | None = None, clip: tuple[float, float] | None = None,
              length_credit: str = "all") -> float:
    """O1-Pruner's length-harmonizing reward R = L_ref/L - 1 + lam * (A - A_ref).

    Paper form by default. Options: `clip_length` bounds the length term (it is unbounded above: a very short
    answer can outscore a correct chain); `length_credit="correct"` lets a wrong answer only lose from its
    length term, never gain; `clip` bounds the whole reward (the official code uses [-2, 4]).
    An empty response counts as length 1.
    """
    length_term = _clip(ref_length / max(length, 1) - 1.0, clip_length)
    if length_credit == "correct" and accuracy < 1.0:
        length_term = min(0.0, length_term)
    return _clip(length_term + lam * (accuracy - ref_accuracy), clip)


def kimi(lengths: list[int], correct: list[bool]) -> list[float]:
    """Kimi k1.5 length penalty within one prompt's group: 0.5 for the shortest down to -0.5 for the longest;
    a wrong response gets min(0, that); all 0 when every length is equal."""
    shortest, longest = min(lengths), max(lengths)
    if shortest == longest:
        return [0.0] * len(lengths)
    lams = [0.5 - (n - shortest) / (longest - shortest) for n in lengths]
    return [lam if ok else min(0.0, lam) for lam, ok in zip(lams, correct)]


def l1_exact(length: int, correct: bool, target: int, alpha: float = 3e-4) -> float:
    """L1 / LCPO-Exact: 1[correct] - alpha * |target - length|."""
    return float(correct) - alpha * abs(target - length)


def l1_max(length: int, correct: bool, target: int, alpha: float = 0.01, delta: float = 0.5,
           form: str = "paper") -> float:
    """L1 / LCPO-Max. form "paper" (the default): 1[correct] * clip(alpha * (target - length) + delta, 0, 1).
    form "code" (L1's official code): 1[correct] * (clip(alpha * (target - length), -1, 1) + 1) / 2, which is
    the paper's form with half the slope (alpha / 2) and delta 0.5."""
    if form == "code":
        return float(correct) * (_clip(alpha * (target - length), (-1.0, 1.0)) + 1) / 2
    return float(correct) * _clip(alpha * (target - length) + delta, (0.0, 1.0))


def dapo_overlong(length: int, max_length: int, cache_length: int) -> float:
    """DAPO soft overlong punishment: 0 up to max_length - cache_length, then falling linearly to -1 at
    max_length, and -1 beyond it."""
    soft_start = max_length - cache_length
    if length <= soft_start:
        return 0.0
    if length <= max_length:
        return (soft_start - length) / cache_length
    return -1.0


def shorter_better(lengths: list[int], correct: list[bool], alpha: float = 2.0, beta: float = 0.001) -> list[float]:
    """ShorterBetter: alpha * 1[correct] - beta * |length - SOL|, SOL = the shortest correct length in the group
    (the group's mean length when none is correct)."""
    correct_lengths = [n for n, ok in zip(lengths, correct) if ok]
    sol = min(correct_lengths) if correct_lengths else fmean(lengths)
    return [alpha * float(ok) - beta * abs(n - sol) for n, ok in zip(lengths, correct)]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # this side cannot overflow for very negative z
    return e / (1.0 + e)


def arora_zanette(lengths: list[int], correct: list[bool], finished: list[bool], alpha: float = 0.1) -> list[float]:
    """Arora & Zanette: 1[correct] * (1 - alpha * sigmoid((length - mean) / std)), mean and std over the correct
    responses of the prompt; a response cut off before EOS counts as wrong. Zero spread gives sigmoid(0)."""
    ok = [c and f for c, f in zip(correct, finished)]
    correct_lengths = [n for n, good in zip(lengths, ok) if good]
    if not correct_lengths:
        return [0.0] * len(lengths)
    mean, std = fmean(correct_lengths), pstdev(correct_lengths)
    return [(1.0 - alpha * _sigmoid((n - mean) / std if std > 0 else 0.0)) if good else 0.0
            for n, good in zip(lengths, ok)]


def aes(accuracy: float, length: float, base_accuracy: float, base_length: float,
        alpha: float = 1.0, beta: float = 3.0, gamma: float = 5.0) -> float:
    """Accuracy-efficiency score: alpha*dL + beta*dAcc when accuracy holds or rises, alpha*dL - gamma*|dAcc| when
    it drops (the O1-Pruner v1 table used +beta*|dAcc| for drops too: a sign slip).
    dL = (L_base - L)/L_base, dAcc = (Acc - Acc_base)/Acc_base."""
    d_length = (base_length - length) / base_length
    d_accuracy = (accuracy - base_accuracy) / base_accuracy
    if d_accuracy >= 0:
        return alpha * d_length + beta * d_accuracy
    return alpha * d_length - gamma * abs(d_accuracy)
