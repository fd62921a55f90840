"""The driver: runs a recipe's stages in order on one Ray cluster and records what they produced.

Before Ray starts, every data source of every stage is loaded and checked, so that a bad row stops the run
before anything trains. A stage that fails ends the run with a `StageError` of one line (which stage, the
cause; for a dead actor, the last checkpoint and the command that resumes); its traceback is in error.log.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from rlcomp.cluster import HELD, dead_actors, init_ray
from rlcomp.config import RecipeError, StageError, data_specs
from rlcomp.report import MetricLogger, console, eval_table, write_atomic, write_json


class SharedRollout:
    """An evaluation rollout group kept from one eval stage to the next: starting an engine (vLLM on a GPU: tens
    of seconds) costs more than a small evaluation. Eval stages with the same engine settings share it, a new
    model switched into the running workers (rows of a comparison, LoRA scales, `model: start`); other settings
    start a new group, and any other stage closes it (its resources go to training)."""

    def __init__(self):
        self.key, self.group = None, None

    def get(self, model: str, key: tuple, make: Callable[[], Any]):
        if self.group is not None and (self.key != key or not self.group.switch(model)):
            self.close()
        if self.group is None:
            self.key, self.group = key, make()
        return self.group

    def close(self) -> None:
        if self.group is not None:
            group, self.key, self.group = self.group, None, None
            group.shutdown()


@dataclass
class Run:
    """What a stage sees of the run: where to write, the seed, the logger and the evaluations so far."""

    output_dir: Path
    seed: int
    logger: MetricLogger
    evals: list[dict] = field(default_factory=list)
    precision: dict[str, dict] = field(default_factory=dict)  # stage -> role -> what its device chose
    stage: str = ""
    resume: bool = False  # continue an interrupted run in output_dir: skip finished stages, load checkpoints
    train_tokens: int = 0  # tokens the current stage has trained on (prompts and responses), for comparisons
    start_model: str | None = None  # what the recipe started from: its `model`, else the first stage's output
    rollouts: SharedRollout = field(default_factory=SharedRollout)  # eval stages' workers (a comparison's, shared)

    def stage_dir(self) -> Path:
        path = self.output_dir / "stages" / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data(self, spec):
        """A stage's data spec as it loads: `from_stage` resolved to that stage's samples.jsonl in this run."""
        if not spec.from_stage:
            return spec
        path = self.output_dir / "stages" / spec.from_stage / "samples.jsonl"
        if not path.is_file():
            raise ValueError(f"from_stage {spec.from_stage}: {path} does not exist (run the sample stage first)")
        return spec.model_copy(update={"path": str(path)})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log(self.stage, metrics, step)

    def record_eval(self, result: dict) -> None:
        self.evals.append({"stage": self.stage, **result})
        self.write_summary()

    def record_precision(self, role: str, choice: dict) -> None:
        """Print and keep what a learner or engine computes in (rlcomp/device.py decides it on its device)."""
        from rlcomp.device import describe

        if choice["warning"] and not any(c["warning"] for s in self.precision.values() for c in s.values()):
            console.print(f"[yellow]warning:[/] {choice['warning']}")  # once per run
        self.precision.setdefault(self.stage, {})[role] = choice
        console.print(f"{self.stage}: {role} computes in {describe(choice)}")
        self.write_summary()

    def write_summary(self, **extra) -> None:
        write_json(self.output_dir / "summary.json", {"evals": self.evals, "precision": self.precision, **extra})


def default_output_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def check_data(recipe) -> None:
    """Load every synthetic task and local file a recipe names; a bad row raises RecipeError naming it.
    Hub dataset names are loaded by their stage (there may be no hub here, or it may be slow)."""
    from rlcomp.data import TASKS, load_examples

    for i, stage in enumerate(recipe.stages):
        for path, spec in data_specs(stage, f"stages.{i}"):
            if spec.from_stage:  # written by an earlier stage of this run
                continue
            if spec.path is None and spec.dataset not in TASKS and not Path(spec.dataset).exists():
                continue
            try:
                examples = load_examples(spec)
            except ValueError as exc:
                raise RecipeError(f"stage {stage.name} ({path}): {exc}") from None
            if not examples:
                raise RecipeError(f"stage {stage.name} ({path}): {spec.path or spec.dataset} has no examples")


def default_resume_command(out: Path) -> str:
    return f"run_recipe(recipe, {str(out)!r}, resume=True)"


def root_cause(exc: BaseException) -> BaseException:
    """What an actor or task raised, out of the Ray errors that wrap it."""
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return exc


def stage_error(stage: str, exc: BaseException, out: Path, resume_command: str) -> StageError:
    """One line for the user about a failed stage; the whole traceback goes to out/error.log."""
    from rlcomp.checkpoint import latest_checkpoint

    log = out / "error.log"
    write_atomic(log, f"stage {stage}\n" + "".join(traceback.format_exception(exc)))
    if dead := dead_actors(exc):
        checkpoint = latest_checkpoint(out / "stages" / stage)
        saved = f"last checkpoint {checkpoint}" if checkpoint else "no checkpoint of this stage yet (it restarts)"
        message = (f"{' and '.join(dead)} died (killed, or out of memory); {saved}; resume with: {resume_command}")
    else:
        from rlcomp.cluster import PlacementError
        from rlcomp.rewards import RewardError

        cause = root_cause(exc)
        lines = str(cause).strip().splitlines() or [""]
        # rlcomp's own errors say what happened; anything else is named by its type too.
        ours = isinstance(cause, (PlacementError, RewardError, ValueError))
        message = (lines[0] if ours else f"{type(cause).__name__}: {lines[0]}").removeprefix(f"stage {stage}: ")
    return StageError(f"stage {stage}: {message} (traceback: {log})", log)


def stage_input(given: str | None, run: Run, previous: str | None) -> str | None:
    """A stage's input model: its own `model` ("start": what the run started from, e.g. a comparison's start
    model), else the previous stage's output."""
    if given != "start":
        return given or previous
    if run.start_model is None:
        raise ValueError("model: start, but the run has no start model (set the recipe's `model`, or put a stage "
                         "that makes one first)")
    return run.start_model


def run_recipe(recipe, output_dir: str | Path | None = None, resume: bool = False,
               resume_command: Callable[[Path], str] = default_resume_command,
               rollouts: SharedRollout | None = None) -> dict:
    """Run every stage of a validated recipe; returns the summary (also written to summary.json).
    With `resume`, stages that finished in `output_dir` are skipped and an interrupted stage continues from
    its last checkpoint. A failing stage raises StageError (one line; traceback in output_dir/error.log).
    `rollouts`: eval workers the caller keeps beyond this run (a comparison's rows share them)."""
    from rlcomp.stages import STAGES

    check_data(recipe)
    out = Path(output_dir or recipe.output_dir or default_output_dir())
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    init_ray(recipe.cluster.address, recipe.cluster.num_cpus)
    run = Run(output_dir=out, seed=recipe.seed, logger=MetricLogger(out / "tensorboard"), resume=resume,
              rollouts=rollouts or SharedRollout())
    if resume and (out / "summary.json").is_file():
        earlier = json.loads((out / "summary.json").read_text())
        run.evals, run.precision = earlier["evals"], earlier.get("precision", {})
    model = run.start_model = recipe.model
    started = time.time()
    try:
        for stage in recipe.stages:
            run.stage = stage.name
            done_marker = out / "stages" / stage.name / "done.json"
            if resume and done_marker.is_file():
                model = json.loads(done_marker.read_text())["model"] or model
                run.start_model = run.start_model or model
                console.print(f"stage {stage.name}: finished in an earlier run, skipped")
                continue
            if stage.type != "eval":
                run.rollouts.close()
            console.rule(f"[bold]stage {stage.name}[/] ({stage.type})")
            stage_started, run.train_tokens = time.time(), 0
            try:
                produced = STAGES[stage.type].run(stage, run, stage_input(stage.model, run, model))
            except Exception as exc:
                run.rollouts.close()
                raise stage_error(stage.name, exc, out, resume_command(out)) from exc
            finally:
                HELD.clear()  # a stage's actors end with it (a shared rollout group is placed already)
            model = produced or model
            run.start_model = run.start_model or produced
            write_json(done_marker, {"model": produced, "seconds": round(time.time() - stage_started, 1),
                                     "train_tokens": run.train_tokens})
            console.print(f"stage {stage.name} done in {time.time() - stage_started:.0f}s" +
                          (f"; model: {produced}" if produced else ""))
    finally:
        if rollouts is None:
            run.rollouts.close()
        run.logger.close()
    run.write_summary(final_model=model, seconds=round(time.time() - started, 1))
    if run.evals:
        console.print(eval_table(run.evals))
    console.print(f"output: {out}")
    return {"evals": run.evals, "final_model": model}
