"""Imported by the verifier pool's forkserver (see `verifier_pool`): the first time a process meets a kind of
answer (a fraction, an interval, a union, a tuple, a matrix, a polynomial, ...), math-verify and sympy compile
regexes, build parsers and fill caches, 0.05-0.2 s per kind. Done here once, on a few answers of each kind,
every worker forked afterwards starts warm, including each one that replaces a worker killed on a timeout.
"""
from rlcomp.rewards.verifiers import math_verifier

_ANSWERS = [
    r"7", r"-3", r"0.5", r"10\%", r"\frac{1}{2}", r"-\dfrac{3}{4}", r"\sqrt{3}+2", r"\frac{\sqrt{2}}{2}", r"3\pi",
    r"12\sqrt{5}", r"45^\circ", r"1011_2", r"2k", r"x^3 + 2x^2 - x + 1", r"(x+1)(x-2)", r"\frac{2a+1}{3}",
    r"\cos x", r"\tan \theta", r"\log_2 5", r"e^{2}", r"(1, 2]", r"[-2, 5)", r"(-\infty, 0]", r"(3, \infty)",
    r"(1, 2) \cup (3, 4)", r"x \in [0, 1]", r"\left( 2, \frac{\pi}{3} \right)", r"(1, -2, 3)", r"\{1, 2, 3\}",
    r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1/3 & 0 \\ 2 & -1 \end{pmatrix}", r"y = 3x - 1",
    r"x = 4", r"\text{(A)}", r"\text{even}", r"-\infty",
]

try:  # an exception escaping a preloaded module would take the forkserver down; a cold worker is only slower
    for answer, other in zip(_ANSWERS, _ANSWERS[1:] + _ANSWERS[:1]):
        math_verifier(rf"\boxed{{{answer}}}", other)
        math_verifier(rf"\boxed{{{answer}}}", "5")
except Exception:
    pass
