"""Imported by the verifier pool's forkserver (see `verifier_pool`): math-verify's first calls in a process
compile its big regexes and build its LaTeX parser, about half a second of work. Done here once, every worker
forked afterwards starts warm, including each one that replaces a worker killed on a timeout.
"""
from rlcomp.rewards.verifiers import math_verifier

_ANSWERS = [r"\frac{1}{2}", r"\sqrt{3}+2", r"3\pi", r"(1, 2]", r"x^2 + 2x + 1", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
            r"45^\circ", r"\text{(A)}", r"\{1, 2, 3\}", r"0.5", r"-\infty", r"\dfrac{\sqrt{2}}{2}", r"y = 3x - 1"]

try:  # an exception escaping a preloaded module would take the forkserver down; a cold worker is only slower
    for answer, other in zip(_ANSWERS, _ANSWERS[1:] + _ANSWERS[:1]):
        math_verifier(rf"\boxed{{{answer}}}", other)
except Exception:
    pass
