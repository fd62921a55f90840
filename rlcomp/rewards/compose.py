"""A recipe's `reward:` section: which verifier decides correctness, and the weighted parts summed into the reward.

```yaml
reward:
  verifier: math            # or gsm8k, exact, numeric, addition, ..., module:function; "auto" (default) picks
  timeout: 5                # per sample from its data_source; seconds per verification before it scores 0
  parts:
    - {name: accuracy, weight: 1}
    - {name: kimi, weight: 0.5, warmup_steps: 20}
    - {name: my_reward, weight: 0.1, params: {bonus: 2}}   # @reward-registered, module:function or file.py:function
```
Builtin parts take their parameters inline; custom parts take theirs under `params`. Length parts use the
verifier's verdict: a sample is correct when its accuracy is >= 0.5.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from rlcomp.rewards import length
from rlcomp.rewards.reference import ReferenceTable
from rlcomp.rewards.registry import FORMS, RewardFunction, resolve
from rlcomp.rewards.verifiers import DEFAULT_TIMEOUT, VERIFIERS
from rlcomp.sample import Sample

Bounds = tuple[float, float]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = 1.0


class AccuracyPart(_Part):
    name: Literal["accuracy"]


class O1PrunerPart(_Part):
    name: Literal["o1_pruner"]
    lam: float = 2.0  # the paper's lambda: 2 for Marco-o1-7B, 5 for QwQ-32B
    reference: str | None = None  # a ReferenceTable file, used unless a table is handed to the scorer
    clip_length: Bounds | None = None  # e.g. [-1, 1]: bounds L_ref/L - 1, which is unbounded above
    clip: Bounds | None = None  # the official code clips R to [-2, 4]
    length_credit: Literal["all", "correct"] = "all"  # "correct": a wrong answer never gains from being short
    # "dataset": R z-scored over every reference sample's R, as the official code z-scores its training set
    normalize: Literal["none", "dataset"] = "none"


class KimiPart(_Part):
    name: Literal["kimi"]
    warmup_steps: int = Field(0, ge=0)  # steps trained on correctness alone before the penalty switches on


class _TargetLengthPart(_Part):
    target: int | None = Field(None, gt=0)  # fixed target length; else each sample's extra[target_key]
    target_key: str = "target_length"  # L1 puts "Think for N tokens." in the prompt and N here


class L1ExactPart(_TargetLengthPart):
    name: Literal["l1_exact"]
    alpha: float = 3e-4


class L1MaxPart(_TargetLengthPart):
    name: Literal["l1_max"]
    alpha: float = 0.01
    delta: float = 0.5
    form: Literal["paper", "code"] = "paper"  # "code": L1's official code, half the paper's slope (length.l1_max)


class DapoOverlongPart(_Part):
    name: Literal["dapo_overlong"]
    max_length: int = Field(gt=0)  # L_max, the generation limit
    cache_length: int = Field(gt=0)  # L_cache, the soft-penalty zone before it

    @model_validator(mode="after")
    def _cache_fits(self):
        if self.cache_length > self.max_length:
            raise ValueError("cache_length must not exceed max_length")
        return self


class ShorterBetterPart(_Part):
    name: Literal["shorter_better"]
    alpha: float = 2.0
    beta: float = 0.001


class AroraZanettePart(_Part):
    name: Literal["arora_zanette"]
    alpha: float = 0.1


class CustomPart(_Part):
    name: str  # @reward-registered name, module:function, or path/to/file.py:function
    params: dict[str, Any] = {}  # keyword arguments of every call
    factory_args: dict[str, Any] | None = None  # `name` is a factory: called once with these, it gives the function
    form: Literal[FORMS] | None = None  # calling convention; detected from the parameter names when omitted


BUILTIN_PARTS = {m.model_fields["name"].annotation.__args__[0]: m for m in (
    AccuracyPart, O1PrunerPart, KimiPart, L1ExactPart, L1MaxPart, DapoOverlongPart, ShorterBetterPart,
    AroraZanettePart)}


def _part_kind(value: Any) -> str:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return name if name in BUILTIN_PARTS else "custom"


PartSpec = Annotated[
    Union[tuple(Annotated[m, Tag(n)] for n, m in BUILTIN_PARTS.items()) + (Annotated[CustomPart, Tag("custom")],)],
    Discriminator(_part_kind),
]


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verifier: str | None = "auto"  # "auto": from each sample's data_source; None: no verifier (custom parts only)
    verifier_options: dict[str, Any] = {}  # keyword options of the named verifier, e.g. {box: first}
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0)
    workers: int | None = Field(None, ge=1)  # verifier processes; default: the cores the service is given
    parts: list[PartSpec] = Field(default_factory=lambda: [AccuracyPart(name="accuracy")], min_length=1)

    @field_validator("verifier")
    @classmethod
    def _known_verifier(cls, name: str | None) -> str | None:
        if name is not None and name != "auto" and name not in VERIFIERS and ":" not in name:
            raise ValueError(f"unknown verifier {name!r}; known: {sorted(VERIFIERS)}, auto, or module:function")
        return name

    @model_validator(mode="after")
    def _consistent(self):
        if self.verifier_options:
            if self.verifier not in VERIFIERS:
                raise ValueError("verifier_options need a builtin verifier named explicitly (not auto/None)")
            try:
                inspect.signature(VERIFIERS[self.verifier]).bind("response", "gold", **self.verifier_options)
            except TypeError as exc:
                raise ValueError(f"verifier_options for {self.verifier!r}: {exc}") from None
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"parts: duplicate names in {names}")
        if self.verifier is None:
            needy = [n for n in names if n in BUILTIN_PARTS and n != "dapo_overlong"]
            if needy:
                raise ValueError(f"parts {needy} need correctness: set a verifier")
        return self

    @property
    def needs_reference_table(self) -> bool:
        """A part scores against per-prompt statistics of the start model, collected before training."""
        return any(isinstance(p, O1PrunerPart) for p in self.parts)


@dataclass
class Part:
    name: str
    weight: float
    scores: Callable[[list[list[Sample]], int], list[list[float]]]  # (groups, step) -> a value per sample


def _correct(s: Sample) -> bool:
    return s.rewards["accuracy"] >= 0.5


def _target(part: _TargetLengthPart, s: Sample) -> int:
    if part.target is not None:
        return part.target
    if part.target_key not in s.extra:
        raise KeyError(f"{part.name}: the part sets no `target` and a sample has no extra[{part.target_key!r}] "
                       f"(prompt {s.prompt[:60]!r})")
    return int(s.extra[part.target_key])


def _each_sample(fn: Callable[[Sample], float]):
    return lambda groups, step: [[fn(s) for s in group] for group in groups]


def _each_group(fn: Callable[[list[Sample]], list[float]]):
    return lambda groups, step: [fn(group) if group else [] for group in groups]


def build_parts(spec: RewardSpec, reference: ReferenceTable | None = None,
                functions: dict[str, RewardFunction] | None = None,
                log_metric: Callable[[str, float], None] | None = None) -> list[Part]:
    """The parts of a spec as functions of (groups, step). `functions`: custom functions by name, which take
    precedence over the `@reward` registry (a Ray actor gets the driver's registrations this way);
    `log_metric(name, value)` receives what TRL-form functions log."""
    return [Part(p.name, p.weight, _part_scores(p, reference, functions, log_metric)) for p in spec.parts]


def _part_scores(p, reference, functions, log_metric=None):  # noqa: C901 - one branch per builtin part
    if isinstance(p, CustomPart):
        fn = resolve(p.name, p.form, functions, p.factory_args)
        return lambda groups, step: fn.scores(groups, step, p.params, log_metric)
    if isinstance(p, AccuracyPart):
        return _each_sample(lambda s: s.rewards["accuracy"])
    if isinstance(p, O1PrunerPart):
        # A table handed in (the RL stage builds one when the file does not exist yet) wins over the file.
        table = reference
        if table is None and p.reference and Path(p.reference).is_file():
            table = ReferenceTable.load(p.reference)

        def reward(n: int, accuracy: float, ref) -> float:
            return length.o1_pruner(n, accuracy, ref.length, ref.accuracy, p.lam, p.clip_length, p.clip, p.length_credit)

        shift, scale = 0.0, 1.0
        if p.normalize == "dataset" and table is not None:
            refs = list(table.by_prompt.values())
            if any(r.sample_lengths is None for r in refs):
                raise ValueError("o1_pruner normalize: dataset needs a reference table with every sample "
                                 "(built by rlcomp, not loaded from an older file)")
            rs = [reward(n, a, r) for r in refs for n, a in zip(r.sample_lengths, r.sample_accuracies)]
            shift = sum(rs) / len(rs)
            scale = max((sum((x - shift) ** 2 for x in rs) / max(1, len(rs) - 1)) ** 0.5, 1e-6)

        def o1(s: Sample) -> float:
            if table is None:
                raise ValueError(f"o1_pruner needs a reference table: no file at `reference: {p.reference}` "
                                 "and none handed to the scorer (Scorer.set_reference)")
            return (reward(s.length, s.rewards["accuracy"], table.lookup(s.prompt)) - shift) / scale
        return _each_sample(o1)
    if isinstance(p, KimiPart):
        penalty = _each_group(lambda g: length.kimi([s.length for s in g], [_correct(s) for s in g]))
        return lambda groups, step: penalty(groups, step) if step >= p.warmup_steps else [[0.0] * len(g) for g in groups]
    if isinstance(p, L1MaxPart):
        return _each_sample(lambda s: length.l1_max(s.length, _correct(s), _target(p, s), p.alpha, p.delta, p.form))
    if isinstance(p, L1ExactPart):
        return _each_sample(lambda s: length.l1_exact(s.length, _correct(s), _target(p, s), p.alpha))
    if isinstance(p, DapoOverlongPart):
        return _each_sample(lambda s: length.dapo_overlong(s.length, p.max_length, p.cache_length))
    if isinstance(p, ShorterBetterPart):
        return _each_group(lambda g: length.shorter_better([s.length for s in g], [_correct(s) for s in g],
                                                           p.alpha, p.beta))
    if isinstance(p, AroraZanettePart):
        return _each_group(lambda g: length.arora_zanette([s.length for s in g], [_correct(s) for s in g],
                                                          [s.finished for s in g], p.alpha))
    raise TypeError(f"no scorer for part {p!r}")
