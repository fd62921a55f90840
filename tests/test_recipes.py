"""Every recipe in recipes/ validates, and runs end to end with --smoke on the tiny model."""
import json
from pathlib import Path

import pytest

from rlcomp.compare import Comparison, load_any, run_compare
from rlcomp.config import load_recipe
from rlcomp.pipeline import run_recipe

RECIPES = sorted(p.name for p in (Path(__file__).parent.parent / "recipes").glob("*.yaml"))
RL_RECIPES = ["grpo.yaml", "ppo.yaml", "o1_pruner.yaml", "kimi_long2short.yaml"]
COMPARISONS = ["compare.yaml", "compare_math.yaml"]


def test_the_four_rl_recipes_exist_and_are_executable():
    for name in RL_RECIPES:
        path = Path("recipes") / name
        assert path.read_text().startswith("#!/usr/bin/env -S rlcomp run"), name
        assert path.stat().st_mode & 0o111, f"{name} is not executable"


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_validates_in_smoke_form(name):
    recipe = load_any(Path("recipes") / name, smoke=True)
    assert isinstance(recipe, Comparison) == (name in COMPARISONS)
    stages = recipe.start.stages if name in COMPARISONS else recipe.stages
    assert stages[0].type == "make_model"


@pytest.mark.e2e
@pytest.mark.parametrize("name", COMPARISONS)
def test_comparison_smoke_run(ray_cluster, name, tmp_path):
    comparison = load_any(Path("recipes") / name, smoke=True)
    result = run_compare(comparison, tmp_path)
    assert [r["method"] for r in result["rows"]] == list(comparison.rows)
    assert all(r["status"] == "ok" for r in result["rows"]), [r.get("error") for r in result["rows"]]
    assert all(set(r["results"]) == set(comparison.config.eval.datasets()) for r in result["rows"])
    assert (tmp_path / "report.html").is_file() and (tmp_path / "pareto.png").is_file()


@pytest.mark.e2e
@pytest.mark.parametrize("name", [r for r in RL_RECIPES if r != "o1_pruner.yaml"])  # that one: tests/test_ray_job.py
def test_smoke_run(ray_cluster, name, tmp_path):
    recipe = load_recipe(Path("recipes") / name, smoke=True)
    run_recipe(recipe, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["evals"], "a smoke run ends with an evaluation"
    assert all(e["n"] > 0 and 0 <= e["accuracy"] <= 1 for e in summary["evals"])
    rl_stage = next(s for s in recipe.stages if s.type == "rl")
    steps = (tmp_path / "stages" / rl_stage.name / "steps.jsonl").read_text().splitlines()
    assert len(steps) == rl_stage.max_steps
    assert (tmp_path / "stages" / rl_stage.name / "model" / "config.json").is_file()
