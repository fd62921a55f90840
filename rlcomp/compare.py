"""`rlcomp compare`: chain-compression methods side by side, from one start model, under one evaluation.

A comparison file names a `start` (a model, or stages that make one), `methods` (each a list of stages, the
same stage types as recipes) and one `eval` spec. The start is made first. Then every method runs from it as
a Ray task of its own, several at once while the cluster has room for their actors (each method's peak
resources, from its stages), else one after another; the start model itself is a row. Then every model is
evaluated with the same spec, in one rollout group whose workers switch from model to model: greedy accuracy
and tokens, and optionally sampled pass@1 / pass@k, overall and per level. A method whose first stages are
another's (the same settings, e.g. CoT-Valve's delta under CoT-Valve++) runs after it and takes those finished
stages instead of repeating them (its train time still counts them; its wall time does not). A method that
fails becomes a row saying why; `--resume` skips finished methods. Results go to compare.json, and from it
(rlcomp/compare_report.py) compare.md, plots and report.html.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from rlcomp.config import (RecipeError, apply_overrides, load_recipe, read_mapping, smoke_shrink, smoke_stages, validate,
                           validate_recipe)
from rlcomp.data import DataSpec
from rlcomp.prompts import PromptSpec
from rlcomp.schema import ClusterConfig, Strict, check_engine, check_model_path

START = "start"  # the row of the start model itself


class StartSpec(Strict):
    model: str | None = None  # a model to start from (with `stages`: the first stage's input)
    stages: list[dict] = []  # stages that make the start model (validated as a recipe)

    _check_model = field_validator("model")(classmethod(lambda cls, v: check_model_path(v)))

    @model_validator(mode="after")
    def _something(self):
        if self.model is None and not self.stages:
            raise ValueError("give a `model` to start from, or `stages` that make one")
        return self


class EvalSpec(Strict):
    """One evaluation for every row: greedy, and with `samples` > 0 also sampled (pass@1 over the samples)."""

    data: DataSpec | dict[str, DataSpec]  # one data source, or several by name (benchmarks)
    max_tokens: int = Field(256, gt=0)
    workers: int = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    batch_size: int = Field(128, gt=0)
    samples: int = Field(0, ge=0)  # samples per problem for the sampled evaluation (0: greedy only)
    samples_for: dict[str, int] = {}  # per data source, e.g. {aime24: 64} (the 2025 papers: 64 for AIME)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    pass_k: list[int] = []  # each at most `samples`
    level_key: str = "level"

    _check_engine = field_validator("engine")(classmethod(lambda cls, v: check_engine(v)))

    @model_validator(mode="after")
    def _k_fits(self):
        if unknown := set(self.samples_for) - set(self.datasets()):
            raise ValueError(f"samples_for names {sorted(unknown)}: not among the data sources {list(self.datasets())}")
        fewest = min([self.samples, *self.samples_for.values()])
        if bad := [k for k in self.pass_k if not 1 <= k <= fewest]:
            raise ValueError(f"pass_k {bad}: each k must be between 1 and the samples per problem ({fewest})")
        return self

    def datasets(self) -> dict[str, DataSpec]:
        return self.data if isinstance(self.data, dict) else {self.data.dataset: self.data}

    def stages(self) -> list[dict]:
        """The eval stages appended to every method: `eval_<data>` greedy, `sample_<data>` sampled."""
        common = {"type": "eval", "max_tokens": self.max_tokens, "workers": self.workers, "engine": self.engine,
                  "gpus_per_worker": self.gpus_per_worker, "batch_size": self.batch_size,
                  "level_key": self.level_key}
        out = []
        for name, spec in self.datasets().items():
            data = spec.model_dump(exclude_defaults=True)
            out.append({**common, "name": f"eval_{name}", "data": data})
            if self.samples:
                out.append({**common, "name": f"sample_{name}", "data": data,
                            "n": self.samples_for.get(name, self.samples),
                            "temperature": self.temperature, "top_p": self.top_p, "pass_k": self.pass_k})
        return out


class CompareConfig(Strict):
    seed: int = 0
    output_dir: str | None = None
    prompt: PromptSpec = PromptSpec()
    cluster: ClusterConfig = ClusterConfig()
    start: StartSpec
    methods: dict[str, list[dict]] = Field(min_length=1)  # name -> stages, each method from the start model
    max_concurrent: int | None = Field(None, gt=0)  # methods side by side at most (default: as many as fit)
    eval: EvalSpec

    @field_validator("methods")
    @classmethod
    def _names(cls, methods: dict) -> dict:
        for name, stages in methods.items():
            if name == START or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"method name {name!r}: letters, digits, _ . - only, and not {START!r}")
            if not stages:
                raise ValueError(f"method {name!r} has no stages")
        return methods


@dataclass
class Comparison:
    """A validated comparison: its config, the start's recipe (None: start from `start.model`), and one
    recipe per row (the start row's has only the eval stages)."""

    config: CompareConfig
    start: object | None
    rows: dict[str, object]

    def only(self, methods: list[str]) -> Comparison:
        """The comparison with the start row and the named methods only (`rlcomp compare --methods a,b`)."""
        if unknown := [m for m in methods if m not in self.config.methods]:
            raise RecipeError(f"--methods: {unknown[0]!r} is not a method of this comparison "
                              f"(methods: {', '.join(self.config.methods)})")
        rows = {name: row for name, row in self.rows.items() if name == START or name in methods}
        return Comparison(self.config, self.start, rows)


def is_comparison(raw) -> bool:
    return isinstance(raw, dict) and "methods" in raw


def smoke_comparison(raw: dict) -> dict:
    smoke = smoke_shrink(raw)
    start = smoke.get("start") or {}
    smoke["start"] = {"stages": smoke_stages(start.get("stages"))}
    data = smoke["eval"]["data"]
    for spec in data.values() if "dataset" not in data else [data]:
        spec.update(split="test", n=8)
    smoke.pop("output_dir", None)
    # A smoke run shows the rows run, not their times: two at once (compare.yaml's smoke on 2 cores: 146 s, against
    # 173 s with as many at once as fit, four there, and 229 s one at a time).
    smoke["max_concurrent"] = 2
    return smoke


def validate_comparison(raw: dict, source: str = "comparison") -> Comparison:
    config = validate(CompareConfig, raw, source)
    common = {"seed": config.seed, "prompt": config.prompt.model_dump(), "cluster": config.cluster.model_dump()}
    start = None
    if config.start.stages:
        start = validate_recipe({**common, "model": config.start.model, "stages": config.start.stages},
                                source=f"{source}: start")
    evals = config.eval.stages()
    rows = {START: validate_recipe({**common, "stages": evals}, source=f"{source}: eval")}
    for name, stages in config.methods.items():
        clash = {s.get("name") for s in stages if isinstance(s, dict)} & {e["name"] for e in evals}
        if clash:
            raise RecipeError(f"{source}: methods.{name}: stage name {sorted(clash)[0]!r} is the comparison's eval")
        rows[name] = validate_recipe({**common, "stages": stages + evals}, source=f"{source}: methods.{name}")
    return Comparison(config, start, rows)


def load_comparison(path: str | Path, overrides: list[str] = (), smoke: bool = False) -> Comparison:
    """Read, override and validate a comparison; its `smoke_overrides` apply to the --smoke form only."""
    raw = read_mapping(path, "comparison")
    if not is_comparison(raw):
        raise RecipeError(f"{path}: a comparison is a mapping with `start`, `methods` and `eval`")
    smoke_overrides = raw.pop("smoke_overrides", None) or []
    if smoke:
        raw = apply_overrides(smoke_comparison(raw), list(smoke_overrides))
    return validate_comparison(apply_overrides(raw, list(overrides)), source=str(path))


def load_any(path: str | Path, overrides: list[str] = (), smoke: bool = False):
    """A recipe, or a comparison (a file with `methods`): what `rlcomp run FILE` runs."""
    if is_comparison(read_mapping(path)):
        return load_comparison(path, overrides, smoke)
    return load_recipe(path, overrides, smoke)


def peak_resources(recipe) -> dict[str, float]:
    """The most a row's stages hold at once: stages run one after another, so the per-kind maximum."""
    from rlcomp.stages import STAGES

    peak: dict[str, float] = {}
    for stage in recipe.stages:
        need = getattr(STAGES[stage.type], "resources", lambda cfg: {})(stage)
        for kind, amount in need.items():
            peak[kind] = max(peak.get(kind, 0), amount)
    return peak


def shared_prefixes(comparison: Comparison) -> dict[str, tuple[str, list[str]]]:
    """Row -> (an earlier row, the leading training stages the two have alike): the longest such run."""
    trained = {row: [s.model_dump(mode="json") for s in recipe.stages if s.type != "eval"]
               for row, recipe in comparison.rows.items()}
    shares, earlier = {}, []
    for name in comparison.rows:
        best: tuple[str, list[str]] | None = None
        for other in earlier:
            alike = []
            for mine, theirs in zip(trained[name], trained[other]):
                if mine != theirs:
                    break
                alike.append(mine["name"])
            if alike and (best is None or len(alike) > len(best[1])):
                best = (other, alike)
        if best:
            shares[name] = best
        earlier.append(name)
    return shares


def link_shared(stages: list[str], source: Path, out: Path) -> list[str]:
    """Link the finished ones of `stages` from another row's run into this row's (what resume then skips)."""
    linked = []
    for stage in stages:
        src, dst = source / "stages" / stage, out / "stages" / stage
        if (src / "done.json").is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(os.path.relpath(src, dst.parent), target_is_directory=True)
            linked.append(stage)
    return linked


def training_part(recipe, config: CompareConfig):
    """A row's recipe without the comparison's evals (those run afterwards, every row in one rollout group)."""
    evals = {s["name"] for s in config.eval.stages()}
    return recipe.model_copy(update={"stages": [s for s in recipe.stages if s.name not in evals]})


def train_row(recipe_json: dict, out: str, resume: bool, functions: dict, resume_command: str) -> dict:
    """One row's stages from the start model, in a Ray task of its own."""
    from rlcomp.pipeline import run_recipe
    from rlcomp.rewards.registry import REGISTRY

    REGISTRY.update(functions)  # the driver's @reward functions, as the reward service gets them
    started = time.time()
    summary = run_recipe(validate_recipe(recipe_json), out, resume=resume, resume_command=lambda _: resume_command)
    return {"model": summary["final_model"], "started_at": started, "finished_at": time.time()}


def evaluate_row(recipe, trained: dict, out: Path, rollouts, resume_command: str) -> dict:
    """The comparison's evals of a trained row, in the driver, on the shared rollout group; the row's stages."""
    from rlcomp.pipeline import run_recipe

    started = time.time()
    summary = run_recipe(recipe, out, resume=True, resume_command=lambda _: resume_command, rollouts=rollouts)
    stages = {m.parent.name: json.loads(m.read_text()) for m in sorted(Path(out, "stages").glob("*/done.json"))}
    return {**trained, "evals": summary["evals"], "eval_seconds": time.time() - started, "stages": stages}


def row_result(name: str, recipe, finished: dict, config: CompareConfig, out: Path) -> dict:
    """compare.json's row: per data source the greedy and sampled results, with the response lengths."""
    evals = {e["stage"]: e for e in finished["evals"]}
    eval_names = {s["name"] for s in config.eval.stages()}
    trained = {k: v for k, v in finished["stages"].items() if k not in eval_names}
    results = {}
    for data in config.eval.datasets():
        greedy = evals[f"eval_{data}"]
        lengths = [r["tokens"] for r in map(json.loads, (out / "stages" / f"eval_{data}" / "samples.jsonl")
                                            .read_text().splitlines())]
        results[data] = {"greedy": {**greedy, "lengths": lengths}}
        if config.eval.samples:
            results[data]["sampled"] = evals[f"sample_{data}"]
    shared = {p.name: p.resolve().parent.parent.name for p in sorted((out / "stages").iterdir()) if p.is_symlink()}
    return {"method": name, "status": "ok", "model": finished["model"], "shared_stages": shared,
            "stages": [s.type for s in recipe.stages if s.name not in eval_names],
            "wall_seconds": round(finished["finished_at"] - finished["started_at"] + finished["eval_seconds"], 1),
            "started_at": finished["started_at"], "finished_at": finished["finished_at"],
            "train_seconds": round(sum(s["seconds"] for s in trained.values()), 1),
            "train_tokens": sum(s.get("train_tokens", 0) for s in trained.values()), "results": results}


def failure_message(exc: BaseException) -> str:
    from rlcomp.pipeline import root_cause

    cause = root_cause(exc)
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def schedule(pending: list[str], comparison: Comparison, start_model: str | None, out: Path,
             resume: bool, resume_command: str) -> dict[str, dict]:
    """Train the pending rows as Ray tasks, starting each once the resources of the running ones leave room;
    per row what train_row returned, or a failed row."""
    import ray

    from rlcomp.schema import add_resources
    from rlcomp.report import console
    from rlcomp.rewards.registry import REGISTRY

    total = ray.cluster_resources()
    task = ray.remote(num_cpus=0, max_retries=0)(train_row)
    parts = {name: training_part(comparison.rows[name], comparison.config) for name in pending}
    needs = {name: peak_resources(parts[name]) for name in pending}
    shares = shared_prefixes(comparison)
    running: dict = {}  # object ref -> (row, its peak resources)
    done: dict[str, dict] = {}
    queue = []
    for name in pending:  # a row with nothing to train (the start row) is its start model
        if parts[name].stages:
            queue.append(name)
        else:
            done[name] = {"model": start_model, "started_at": time.time(), "finished_at": time.time()}
    while queue or running:
        for name in list(queue):
            provider = shares.get(name, (None,))[0]
            if provider in queue or provider in {row for row, _ in running.values()}:
                continue  # it takes the stages it shares once that row has made them
            need, held = needs[name], add_resources(need for _, need in running.values())
            fits = all(held.get(k, 0) + v <= total.get(k, 0) + 1e-9 for k, v in need.items() if v)
            if len(running) >= (comparison.config.max_concurrent or len(queue) + len(running)):
                break
            if fits or not running:  # alone it may still not fit: its stage then says so, in its row
                recipe = parts[name].model_dump(mode="json")
                recipe["model"] = start_model
                linked = link_shared(shares[name][1], out / "methods" / provider,
                                     out / "methods" / name) if provider else []
                if linked:
                    console.print(f"compare: {name} takes {', '.join(linked)} from {provider}")
                ref = task.remote(recipe, str(out / "methods" / name), resume or bool(linked), dict(REGISTRY),
                                  resume_command)
                running[ref] = (name, need)
                queue.remove(name)
                console.print(f"compare: {name} started ({len(running)} running)")
        if not running:
            continue
        ready, _ = ray.wait(list(running), num_returns=1)
        name, _ = running.pop(ready[0])
        try:
            done[name] = ray.get(ready[0])
            console.print(f"compare: {name} trained")
        except Exception as exc:  # a failed method is a row; the others go on
            done[name] = failed_row(name, exc)
    return done


def failed_row(name: str, exc: BaseException) -> dict:
    from rlcomp.report import console

    row = {"method": name, "status": "failed", "error": failure_message(exc)}
    console.print(f"[red]compare: {name} failed:[/] {row['error']}")
    return row


def evaluate_rows(trained: dict[str, dict], comparison: Comparison, start_model: str | None, out: Path,
                  resume_command: str) -> dict[str, dict]:
    """Every trained row evaluated alike, one after another in one rollout group (each model switched into its
    running workers): one engine start for the comparison rather than one per row."""
    from rlcomp.pipeline import SharedRollout
    from rlcomp.report import console

    rows, rollouts = {}, SharedRollout()
    try:
        for name, finished in trained.items():
            if finished.get("status") == "failed":
                rows[name] = finished
                continue
            recipe = comparison.rows[name].model_copy(update={"model": start_model})
            try:
                evaluated = evaluate_row(recipe, finished, out / "methods" / name, rollouts, resume_command)
                rows[name] = row_result(name, comparison.rows[name], evaluated, comparison.config, out / "methods" / name)
                console.print(f"compare: {name} finished")
            except Exception as exc:
                rows[name] = failed_row(name, exc)
    finally:
        rollouts.close()
    return rows


def run_compare(comparison: Comparison, output_dir: str | Path | None = None, resume: bool = False,
                resume_command: Callable[[Path], str] | None = None) -> dict:
    """Make the start model, run every method from it, evaluate every row alike, write compare.json and the
    report. With `resume`, rows finished in `output_dir` are kept and the rest run (from their checkpoints)."""
    from rlcomp.cluster import init_ray
    from rlcomp.compare_report import write_report
    from rlcomp.device import machine_info
    from rlcomp.pipeline import check_data, default_output_dir, run_recipe
    from rlcomp.report import console, write_atomic, write_json

    config = comparison.config
    for recipe in filter(None, [comparison.start, *comparison.rows.values()]):
        check_data(recipe)  # every bad row of every method's data, before anything trains
    out = Path(output_dir or config.output_dir or default_output_dir())
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compare.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    init_ray(config.cluster.address, config.cluster.num_cpus)
    started = time.time()
    again = (resume_command or (lambda o: f"run_compare(comparison, {str(o)!r}, resume=True)"))(out)
    start_model = config.start.model
    if comparison.start is not None:
        console.rule("[bold]compare: the start model[/]")
        start_model = run_recipe(comparison.start, out / "start", resume=resume,
                                 resume_command=lambda _: again)["final_model"]
    previous = json.loads((out / "compare.json").read_text()) if resume and (out / "compare.json").is_file() else {}
    rows = {r["method"]: r for r in previous.get("rows", []) if r["status"] == "ok" and r["method"] in comparison.rows}
    for name in rows:
        console.print(f"compare: {name} finished in an earlier run, skipped")
    pending = [name for name in comparison.rows if name not in rows]
    trained = schedule(pending, comparison, start_model, out, resume, again)
    rows.update(evaluate_rows({name: trained[name] for name in pending}, comparison, start_model, out, again))
    result = {"comparison": "rlcomp compare", "start_model": start_model, "datasets": list(config.eval.datasets()),
              "eval": config.eval.model_dump(mode="json"), "machine": machine_info(),
              "seconds": round(time.time() - started + previous.get("seconds", 0), 1),  # over every resumed run
              "rows": [rows[name] for name in comparison.rows]}
    add_scores(result)
    write_json(out / "compare.json", result)
    write_report(result, out)
    console.print(f"compare: {out / 'compare.md'}, {out / 'report.html'}")
    return result


def add_scores(result: dict) -> None:
    """Compression vs the start row and AES (O1-Pruner's accuracy-efficiency score, the sign of an accuracy drop
    kept) for every finished row and data source, from the greedy results; their mean over data sources."""
    from rlcomp.rewards import aes

    base = next((r for r in result["rows"] if r["method"] == START and r["status"] == "ok"), None)
    for row in result["rows"]:
        if row["status"] != "ok" or base is None:
            continue
        scores = []
        for data, res in row["results"].items():
            ref, own = base["results"][data]["greedy"], res["greedy"]
            res["tokens_vs_start"] = own["mean_response_tokens"] / ref["mean_response_tokens"]
            res["aes"] = (aes(own["accuracy"], own["mean_response_tokens"], ref["accuracy"],
                              ref["mean_response_tokens"]) if ref["accuracy"] > 0 else None)
            scores.append(res["aes"])
        row["mean_aes"] = sum(scores) / len(scores) if None not in scores else None
