"""The driver: runs a recipe's stages in order on one Ray cluster and records what they produced."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlcomp.cluster import init_ray
from rlcomp.report import MetricLogger, console, eval_table, write_atomic, write_json


@dataclass
class Run:
    """What a stage sees of the run: where to write, the seed, the logger and the evaluations so far."""

    output_dir: Path
    seed: int
    logger: MetricLogger
    evals: list[dict] = field(default_factory=list)
    stage: str = ""
    resume: bool = False  # continue an interrupted run in output_dir: skip finished stages, load checkpoints

    def stage_dir(self) -> Path:
        path = self.output_dir / "stages" / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.logger.log(self.stage, metrics, step)

    def record_eval(self, result: dict) -> None:
        self.evals.append({"stage": self.stage, **result})
        self.write_summary()

    def write_summary(self, **extra) -> None:
        write_json(self.output_dir / "summary.json", {"evals": self.evals, **extra})


def default_output_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def run_recipe(recipe, output_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Run every stage of a validated recipe; returns the summary (also written to summary.json).
    With `resume`, stages that finished in `output_dir` are skipped and an interrupted stage continues from
    its last checkpoint."""
    from rlcomp.stages import STAGES

    out = Path(output_dir or recipe.output_dir or default_output_dir())
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    init_ray(recipe.cluster.address, recipe.cluster.num_cpus)
    run = Run(output_dir=out, seed=recipe.seed, logger=MetricLogger(out / "tensorboard"), resume=resume)
    if resume and (out / "summary.json").is_file():
        run.evals = json.loads((out / "summary.json").read_text())["evals"]
    model = recipe.model
    started = time.time()
    try:
        for stage in recipe.stages:
            run.stage = stage.name
            done_marker = out / "stages" / stage.name / "done.json"
            if resume and done_marker.is_file():
                model = json.loads(done_marker.read_text())["model"] or model
                console.print(f"stage {stage.name}: finished in an earlier run, skipped")
                continue
            console.rule(f"[bold]stage {stage.name}[/] ({stage.type})")
            stage_started = time.time()
            produced = STAGES[stage.type].run(stage, run, stage.model or model)
            model = produced or model
            write_json(done_marker, {"model": produced, "seconds": round(time.time() - stage_started, 1)})
            console.print(f"stage {stage.name} done in {time.time() - stage_started:.0f}s" +
                          (f"; model: {produced}" if produced else ""))
    finally:
        run.logger.close()
    run.write_summary(final_model=model, seconds=round(time.time() - started, 1))
    if run.evals:
        console.print(eval_table(run.evals))
    console.print(f"output: {out}")
    return {"evals": run.evals, "final_model": model}
