"""Custom reward functions: the `@reward` decorator, loading `module:function` and `path/to/file.py:function`,
and calling functions in the forms users already have, unchanged.

Forms, detected from parameter names (`form=` overrides):
- "sample": `f(sample, **params) -> float`, one `Sample` at a time (rlcomp's own form);
- "group":  `f(group, **params) -> list[float]`, the samples of one prompt (first parameter `group` or `samples`);
- "verl":   `compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | {"score": ...}`;
- "trl":    `f(prompts, completions, **columns) -> list[float]`, the whole batch, called as TRL's GRPOTrainer calls
            it: prompts as the dataset has them, completions as text, or as `[{"role": "assistant", "content": ...}]`
            for conversational prompts or when the `completions` annotation asks for dicts (TRL's shipped rewards),
            `completion_ids`, every dataset column by its own name, `trainer_state` (its `global_step`), and the
            `log_extra` (no-op here) and `log_metric` (logged as `reward_log/<name>`) hooks. As in TRL, None is 0.
Any of them may be `async def`: the calls then run concurrently. A function with a `step` parameter gets the
training step. Scores must be finite numbers. The verifier has run first: `sample.rewards["accuracy"]` is set.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
import types
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlcomp.prompts import is_conversational
from rlcomp.sample import Sample

FORMS = ("sample", "group", "verl", "trl")


class RewardError(Exception):
    """A user reward function failed; the message names the function and the sample or group."""


def load_function(ref: str) -> Callable:
    """The function named by `package.module:function` or `path/to/file.py:function` (relative to the cwd)."""
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"{ref!r} is not `module:function` or `path/to/file.py:function`")
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"reward file not found: {where}")
        module_name = f"rlcomp_user_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses and pickling inside the file need it
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"no function {name!r} in {where}")
    return fn


def detect_form(fn: Callable) -> str:
    names = list(inspect.signature(fn).parameters)
    if {"solution_str", "ground_truth"} <= set(names):
        return "verl"
    if {"completions", "completion_ids", "prompts"} & set(names):
        return "trl"
    if names and names[0] in ("group", "samples"):
        return "group"
    return "sample"


def _describe(group: int, index: int | None, sample: Sample | None) -> str:
    if sample is None:
        return f"the batch of {group} samples"
    where = f"group {group}" if index is None else f"sample {index} of group {group}"
    return f"{where} (prompt {sample.prompt[:60]!r}, response {sample.response[:60]!r})"


@dataclass
class RewardFunction:
    """A user function plus its calling form; `scores(groups, step, params)` -> a score per sample."""

    fn: Callable
    name: str
    form: str

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"reward {self.name!r}: form must be one of {FORMS}, got {self.form!r}")
        signature = inspect.signature(self.fn).parameters
        self._takes = set(signature)
        self._takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.values())

    def _keywords(self, kwargs: dict[str, Any], step: int) -> dict[str, Any]:
        if "step" in self._takes:
            kwargs = {**kwargs, "step": step}
        return kwargs if self._takes_any else {k: v for k, v in kwargs.items() if k in self._takes}

    def _completions_as_messages(self, prompts: list) -> bool:
        """TRL gives messages for conversational prompts; a `completions` annotation naming dicts (as TRL's own
        rewards have) or str decides for text prompts too."""
        parameter = inspect.signature(self.fn).parameters.get("completions")
        annotation = "" if parameter is None or parameter.annotation is inspect.Parameter.empty else str(
            parameter.annotation)
        if "dict" in annotation:
            return True
        if "str" in annotation:
            return False
        return bool(prompts) and is_conversational(prompts[0])

    def _calls(self, groups: list[list[Sample]], step: int, params: dict, log_metric: Callable) -> list[tuple]:
        """(args, kwargs, where, positions) per call; positions are the (group, index) its scores go to."""
        if self.form == "trl":
            flat = [s for g in groups for s in g]
            prompts = [s.prompt for s in flat]
            completions = [[{"role": "assistant", "content": s.response}] for s in flat] \
                if self._completions_as_messages(prompts) else [s.response for s in flat]
            columns = {"answer": [s.answer for s in flat], "data_source": [s.data_source for s in flat]}
            for key in {k for s in flat for k in s.extra} - {"prompt", "completion", "completion_ids"}:
                columns[key] = [s.extra.get(key) for s in flat]  # the dataset's own columns win, as in TRL
            kwargs = {"prompts": prompts, "completions": completions,
                      "completion_ids": [s.response_ids for s in flat], **columns,
                      "trainer_state": types.SimpleNamespace(global_step=step),
                      "log_extra": lambda column, values: None, "log_metric": log_metric, **params}
            positions = [(g, i) for g, group in enumerate(groups) for i in range(len(group))]
            return [((), self._keywords(kwargs, step), (len(flat), None, None), positions)]
        if self.form == "group":
            return [((group,), self._keywords(params, step), (g, None, group[0] if group else None),
                     [(g, i) for i in range(len(group))]) for g, group in enumerate(groups) if group]
        calls = []
        for g, group in enumerate(groups):
            for i, s in enumerate(group):
                if self.form == "verl":
                    args, kwargs = (), {"data_source": s.data_source, "solution_str": s.response,
                                        "ground_truth": s.answer, "extra_info": s.extra, **params}
                else:
                    args, kwargs = (s,), params
                calls.append((args, self._keywords(kwargs, step), (g, i, s), [(g, i)]))
        return calls

    def _check(self, result: Any, where: tuple, positions: list) -> list[float]:
        if self.form in ("group", "trl"):
            if not isinstance(result, (list, tuple)) or len(result) != len(positions):
                raise self._error(where, f"returned {type(result).__name__} {str(result)[:80]}, "
                                         f"expected a list of {len(positions)} scores")
            values = result
        else:
            values = [result]
        out = []
        for value in values:
            if isinstance(value, dict) and self.form == "verl":  # verl allows {"score": ..., other metrics}
                value = value.get("score")
            if value is None and self.form == "trl":
                value = 0.0
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise self._error(where, f"returned {value!r}, expected a finite number")
            out.append(float(value))
        return out

    def _error(self, where: tuple, what: str) -> RewardError:
        fn = f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', self.fn)}"
        return RewardError(f"reward function {self.name!r} ({fn}) {what} on {_describe(*where)}")

    def scores(self, groups: list[list[Sample]], step: int = 0, params: dict | None = None,
               log_metric: Callable[[str, float], None] | None = None) -> list[list[float]]:
        calls = self._calls(groups, step, params or {}, log_metric or (lambda name, value: None))

        def run(call):
            args, kwargs, where, positions = call
            try:
                return self._check(self.fn(*args, **kwargs), where, positions)
            except RewardError:
                raise
            except Exception as exc:
                raise self._error(where, f"raised {type(exc).__name__}: {exc}") from exc

        async def run_async(call):
            args, kwargs, where, positions = call
            try:
                return self._check(await self.fn(*args, **kwargs), where, positions)
            except RewardError:
                raise
            except Exception as exc:
                raise self._error(where, f"raised {type(exc).__name__}: {exc}") from exc

        async def run_all():
            return await asyncio.gather(*(run_async(c) for c in calls))

        if inspect.iscoroutinefunction(self.fn):
            results = _run_to_completion(run_all)
        else:
            results = [run(c) for c in calls]
        out = [[0.0] * len(group) for group in groups]
        for call, values in zip(calls, results):
            for (g, i), value in zip(call[3], values):
                out[g][i] = value
        return out


def _run_to_completion(coroutine_function):
    """Run from sync code, also when the caller already runs an event loop (then in a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_function())
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine_function()).result()


REGISTRY: dict[str, RewardFunction] = {}


def reward(fn: Callable | str | None = None, *, name: str | None = None, form: str | None = None):
    """Register a reward function under a name that recipes can use.

    `@reward`, `@reward("short_name")` or `@reward(name="short_name", form="group")`; returns the function itself.
    """
    if isinstance(fn, str):
        fn, name = None, fn

    def register(f: Callable) -> Callable:
        from rlcomp.rewards.compose import BUILTIN_PARTS

        key = name or f.__name__
        if key in BUILTIN_PARTS:
            raise ValueError(f"reward name {key!r} is taken by a builtin part; choose another name")
        REGISTRY[key] = RewardFunction(f, key, form or detect_form(f))
        return f

    return register(fn) if fn is not None else register


def resolve(name: str, form: str | None = None, functions: dict[str, RewardFunction] | None = None,
            factory_args: dict | None = None) -> RewardFunction:
    """A custom part's function: given in `functions`, registered with `@reward`, or `module:function`.
    With `factory_args` the function named is a factory (as TRL's `get_cosine_scaled_reward`): called with them
    once, it returns the reward function."""
    found = (functions or {}).get(name) or REGISTRY.get(name)
    if found is None and ":" in name:
        fn = load_function(name)
        if factory_args is not None:
            try:
                fn = fn(**factory_args)
            except TypeError as exc:
                raise ValueError(f"reward {name!r}: factory_args {factory_args} do not fit: {exc}") from None
        found = RewardFunction(fn, name, form or detect_form(fn))
    if found is None:
        raise KeyError(f"unknown reward {name!r}: not a builtin part, not registered with @reward, "
                       "and not `module:function` or `path/to/file.py:function`")
    if form and form != found.form:
        found = RewardFunction(found.fn, found.name, form)
    return found
