"""Synthetic reasoning tasks whose chains of thought come in verbose, terse and answer-only forms.

Every response is printable ASCII, steps separated by spaces, ending in `ans <answer>`. A verbose chain is how
a long-CoT model over-thinks: an optional restatement, the needed steps, then 0-3 redundant re-checks. The
probabilities are tilted so the most likely path is the longest one while the fully terse path keeps ~6% of
the data (0.4 * 0.15): greedy decoding after SFT then gives long chains and RL has something to compress,
yet the short path stays in the model's support.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from rlcomp.sample import Example

COT_FORMS = ("verbose", "terse", "none")
SPLITS = ("train", "test")
P_RESTATE = 0.6
CHECK_WEIGHTS = (0.15, 0.2, 0.25, 0.4)  # P(0, 1, 2, 3 redundant re-checks)
TEST_PER_MILLE = 100  # ~10% of the problem space is held out for test
MAX_FRUITLESS_DRAWS = 2000  # draws without a new problem before duplicates are allowed (small spaces)

_ANS = re.compile(r"\bans\s+([^\s;]+)")


def split_of(text: str) -> str:
    """The split a problem belongs to, from a stable hash of its text (so train and test never overlap)."""
    h = int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big")
    return "test" if h % 1000 < TEST_PER_MILLE else "train"


@dataclass
class Problem:
    text: str  # the bare problem, also the default prompt, e.g. "347+285="
    answer: str
    steps: list[str]  # the needed steps: the terse chain
    restates: list[str]  # candidate restatements (verbose only)
    checks: list[str]  # candidate redundant re-checks (verbose only); at least 3
    level: int | None = None  # difficulty level, recorded in the example's `extra["level"]` (mixed tasks)


class Task:
    """A synthetic task: subclasses draw a random `Problem`; rendering, splits and checking are shared."""

    name = ""
    defaults: dict = {}  # the task's keyword options and their default values

    def draw(self, rng: random.Random, **options) -> Problem:
        raise NotImplementedError

    def render(self, problem: Problem, cot: str, rng: random.Random) -> str:
        if cot not in COT_FORMS:
            raise ValueError(f"cot must be one of {COT_FORMS}, got {cot!r}")
        parts = []
        if cot == "verbose" and rng.random() < P_RESTATE:
            parts.append(rng.choice(problem.restates))
        if cot != "none":
            parts += problem.steps
        if cot == "verbose":
            k = rng.choices(range(len(CHECK_WEIGHTS)), weights=CHECK_WEIGHTS)[0]
            parts += rng.sample(problem.checks, k)
        parts.append(f"ans {problem.answer}")
        return " ".join(parts)

    def generate(self, n: int, split: str = "train", seed: int = 0, cot: str = "verbose", **options) -> list[Example]:
        """n problems of `split`, deduplicated while the problem space allows; deterministic in the arguments."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} for synthetic tasks, got {split!r}")
        if cot not in COT_FORMS:
            raise ValueError(f"cot must be one of {COT_FORMS}, got {cot!r}")
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)} for task {self.name!r}; known: {sorted(self.defaults)}")
        opts = {**self.defaults, **options}
        rng = random.Random(f"{self.name}/{split}/{seed}")  # str seeds are stable across processes
        examples: list[Example] = []
        seen: set[str] = set()
        fruitless, allow_dups = 0, False
        while len(examples) < n:
            p = self.draw(rng, **opts)
            if split_of(p.text) != split or (p.text in seen and not allow_dups):
                fruitless += 1
                if fruitless > MAX_FRUITLESS_DRAWS:
                    if not examples:
                        raise ValueError(f"task {self.name!r} with options {opts} has no {split} problems")
                    allow_dups = True  # the split is exhausted: repeat problems rather than loop forever
                continue
            fruitless = 0
            seen.add(p.text)
            examples.append(Example(
                prompt=p.text, answer=p.answer, response=self.render(p, cot, rng),
                id=f"{self.name}/{split}/{len(examples)}", data_source=self.name,
                # The terse form rides along: C3oT's compressor for synthetic tasks (terse rendering draws nothing).
                extra={"question": p.text, "n_steps": len(p.steps), "split": split, "terse": self.render(p, "terse", rng),
                       **({"level": p.level} if p.level is not None else {})},
            ))
        return examples

    def chunked(self, prompt: str, sizes: list[int]) -> str:
        """The terse solution of `prompt` with its i-th step doing `sizes[i]` needed steps at once (learning to
        skip steps: hand-made shorter solutions); sizes of 1 give the terse form."""
        raise ValueError(f"task {self.name!r} cannot write solutions with merged steps")

    @property
    def has_cancelling(self) -> bool:
        return type(self).cancelling is not Task.cancelling

    def cancelling(self, prompt: str) -> list[int]:
        """Where steps i and i + 1 of `prompt`'s solution cancel (the state after both is the state before)."""
        raise ValueError(f"task {self.name!r} has no steps that cancel")

    @staticmethod
    def extract_answer(response: str) -> str | None:
        """The answer after the last `ans`, or None when there is none."""
        found = _ANS.findall(response)
        return found[-1].strip() if found else None

    def check(self, response: str, answer: str) -> bool:
        return self.extract_answer(response) == str(answer).strip()


def _span(value, option: str) -> tuple[int, int]:
    """An option that is a count or [fewest, most], as (fewest, most)."""
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(x, int) and x >= 1 for x in pair) or pair[0] > pair[1]:
        raise ValueError(f"option {option}: a count of at least 1 or [fewest, most], got {value!r}")
    return pair


def _number(rng: random.Random, digits: int) -> int:
    """A number with exactly `digits` digits (0-9 for one digit)."""
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)


class Addition(Task):
    """`347+285=` -> `s1 7+5=12 w2 c1; s2 4+8+1=13 w3 c1; s3 3+2+1=6 w6 c0; ans 632` (columns from the right)."""

    name = "addition"
    defaults = {"digits": 3}

    def draw(self, rng, digits=3):
        # An int: both operands that long. [fewest, most]: each operand's length drawn on its own, as the
        # learning-to-skip-steps paper's addition data (`381+2`, `94+6`); steps run over the longer one.
        fewest, most = _span(digits, "digits")
        lengths = (digits, digits) if isinstance(digits, int) else [rng.randint(fewest, most) for _ in "ab"]
        a, b = _number(rng, lengths[0]), _number(rng, lengths[1])
        columns = max(lengths)
        total = a + b
        steps, column_checks, carry = [], [], 0
        for i in range(columns):
            da, db = a // 10**i % 10, b // 10**i % 10
            s = da + db + carry
            expr = f"{da}+{db}" + (f"+{carry}" if carry else "") + f"={s}"
            steps.append(f"s{i + 1} {expr} w{s % 10} c{s // 10};")
            column_checks.append(f"chk {expr} ok;")
            carry = s // 10
        # The final carry needs no step: it becomes the answer's leading digit.
        return Problem(
            text=f"{a}+{b}=", answer=str(total), steps=steps,
            restates=[f"add {a} and {b};", f"{a}+{b}=?;", f"sum {a} {b};"],
            # Re-checks repeat column steps only: a re-check of the whole sum would ask the model for the
            # answer before `ans`, which a small model learns far more slowly (seen: 79% vs >90% accuracy).
            checks=(column_checks * 3)[: max(3, columns)],
        )

    def chunked(self, prompt, sizes):
        """Merged columns: `347+285=` in sizes [2, 1] -> `s1 47+85=132 w32 c1; s2 3+2+1=6 w6 c0; ans 632`."""
        found = re.fullmatch(r"(\d+)\+(\d+)=", prompt)
        if not found or sum(sizes) != max(map(len, found.groups())):
            raise ValueError(f"{self.name}: cannot split {prompt!r} into steps of {sizes} columns")
        a, b = map(int, found.groups())
        steps, carry, column = [], 0, 0
        for i, k in enumerate(sizes):
            da, db = a // 10**column % 10**k, b // 10**column % 10**k
            s = da + db + carry
            expr = f"{da}+{db}" + (f"+{carry}" if carry else "") + f"={s}"
            steps.append(f"s{i + 1} {expr} w{s % 10**k:0{k}d} c{s // 10**k};")
            carry, column = s // 10**k, column + k
        return " ".join([*steps, f"ans {a + b}"])


class Multiplication(Task):
    """`47*86=` -> `p1 47*6=282; p2 47*80=3760; s1 282+3760=4042; ans 4042` (partial products, then running sums)."""

    name = "multiplication"
    defaults = {"digits": 2}

    def draw(self, rng, digits=2):
        a, b = _number(rng, digits), _number(rng, digits)
        product = a * b
        steps, partial_checks, partials = [], [], []
        for i in range(digits):
            d = b // 10**i % 10
            factor = f"{d}" + "0" * i
            partials.append(a * d * 10**i)
            steps.append(f"p{i + 1} {a}*{factor}={partials[-1]};")
            partial_checks.append(f"chk {factor}*{a}={partials[-1]} ok;")
        acc = partials[0]
        for i, p in enumerate(partials[1:]):
            steps.append(f"s{i + 1} {acc}+{p}={acc + p};")
            acc += p
        return Problem(
            text=f"{a}*{b}=", answer=str(product), steps=steps,
            restates=[f"mul {a} by {b};", f"{a}*{b}=?;", f"{a} times {b};"],
            checks=partial_checks + [f"chk {b}*{a}={product} ok;", f"so {a}*{b}={product};"]
            + ([f"chk {product}/{b}={a} ok;"] if b else []),
        )


_LEFT = {"N": "W", "W": "S", "S": "E", "E": "N"}
_RIGHT = {v: k for k, v in _LEFT.items()}
_AROUND = {"N": "S", "S": "N", "E": "W", "W": "E"}
_TURNS = {"L": _LEFT, "R": _RIGHT, "A": _AROUND}
_DIRECTION = re.compile(r"([NESW]):([LRA](?:,[LRA])*)=")  # a direction problem: the start, then the turns


class Direction(Task):
    """`N:L,R,A,L=` -> `s1 L N>W; s2 R W>N; s3 A N>S; s4 L S>E; ans E` (facing after Left/Right/Around turns)."""

    name = "direction"
    defaults = {"steps": None}  # number of actions, or [fewest, most] drawn uniformly; None draws 4-6

    def draw(self, rng, steps=None):
        fewest, most = (4, 6) if steps is None else _span(steps, "steps")
        n = rng.randint(fewest, most)
        start = rng.choice("NESW")
        actions = [rng.choice("LRA") for _ in range(n)]
        face, chain, step_checks = start, [], []
        for i, act in enumerate(actions):
            new = _TURNS[act][face]
            chain.append(f"s{i + 1} {act} {face}>{new};")
            step_checks.append(f"chk {act} {face}>{new} ok;")
            face = new
        net = sum({"L": 3, "R": 1, "A": 2}[a] for a in actions) % 4  # quarter turns to the right
        return Problem(
            text=f"{start}:{','.join(actions)}=", answer=face, steps=chain,
            restates=[f"face {start} do {n} turns;", f"start {start};", f"{start} then {''.join(actions)};"],
            checks=step_checks + [f"chk net {net}R {start}>{face} ok;", f"so {start} ends {face};"],
        )

    def chunked(self, prompt, sizes):
        """Merged turns: `N:L,R,A=` in sizes [2, 1] -> `s1 LR N>N; s2 A N>S; ans S`."""
        found = _DIRECTION.fullmatch(prompt)
        actions = found.group(2).split(",") if found else []
        if not found or sum(sizes) != len(actions):
            raise ValueError(f"{self.name}: cannot split {prompt!r} into steps of {sizes} turns")
        face, steps, done = found.group(1), [], 0
        for i, k in enumerate(sizes):
            new = face
            for act in actions[done : done + k]:
                new = _TURNS[act][new]
            steps.append(f"s{i + 1} {''.join(actions[done:done + k])} {face}>{new};")
            face, done = new, done + k
        return " ".join([*steps, f"ans {face}"])

    def cancelling(self, prompt):
        """L then R, R then L, A then A: `N:L,A,A=` -> [1]."""
        found = _DIRECTION.fullmatch(prompt)
        if not found:
            raise ValueError(f"{self.name}: not a direction problem: {prompt!r}")
        actions = found.group(2).split(",")
        return [i for i in range(len(actions) - 1) if actions[i] + actions[i + 1] in ("LR", "RL", "AA")]


class MixedAddition(Addition):
    """Addition with 2, 3 or 4 digits drawn in one dataset (the level is the digit count), whose verbose chains
    over-think *between* the needed steps: after each column step a model may hesitate (`wait hmm;`),
    re-derive the column (`wait redo 4+8+1=13;`) or re-check it (`wait 4+8+1=13 ok;`). P(an aside after a step)
    is 0.6 and P(a second one) 0.3, so greedy decoding after SFT writes one aside after every step, and the
    fully terse path keeps 0.4^digits of the data (16%, 6%, 3%). The needed steps grow with the level, so the
    right length depends on the problem; the answer-only form cannot be learned for 4 digits by a small
    model (README, "The comparison task"), so cutting the steps costs accuracy where cutting asides does not."""

    name = "mixed_addition"
    defaults = {"levels": (2, 3, 4)}
    P_ASIDE = 0.6  # an aside after a step
    P_ANOTHER = 0.5  # then, another one (0.6 * 0.5 = 0.3 overall)

    def draw(self, rng, levels=(2, 3, 4)):
        digits = rng.choice(list(levels))
        problem = super().draw(rng, digits)
        problem.level = digits
        return problem

    def render(self, problem: Problem, cot: str, rng: random.Random) -> str:
        if cot not in COT_FORMS:
            raise ValueError(f"cot must be one of {COT_FORMS}, got {cot!r}")
        parts = []
        for step in problem.steps if cot != "none" else ():
            parts.append(step)
            expr = step.split()[1]  # `4+8+1=13`
            while cot == "verbose" and rng.random() < self.P_ASIDE:
                parts.append(rng.choice([f"wait redo {expr};", f"wait {expr} ok;", "wait hmm;"]))
                if rng.random() < self.P_ANOTHER:
                    break
        parts.append(f"ans {problem.answer}")
        return " ".join(parts)


TASKS: dict[str, Task] = {t.name: t for t in (Addition(), Multiplication(), Direction(), MixedAddition())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown synthetic task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]
