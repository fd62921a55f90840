"""The KubeRay example: a RayJob manifest whose entrypoint is an rlcomp command naming a recipe in this repo."""
from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from rlcomp.cli import build_parser
from rlcomp.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "launchers" / "kuberay" / "rayjob.yaml"
IMAGE_ROOT = "/app/"  # where the image has this repository (launchers/kuberay/README.md)


def test_rayjob_manifest_runs_a_recipe_of_this_repo():
    job = yaml.safe_load(MANIFEST.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "rlcomp"
    args, extra = build_parser().parse_known_args(argv[1:])  # the real CLI accepts it
    assert args.command == "run" and not extra
    assert args.recipe.startswith(IMAGE_ROOT)
    recipe = ROOT / args.recipe.removeprefix(IMAGE_ROOT)
    assert recipe.is_file(), f"{args.recipe} names no recipe of this repository"
    load_recipe(recipe, args.overrides)  # and the recipe is valid
    assert args.output_dir.startswith("/mnt/runs/")

    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:  # every pod sees the output volume the entrypoint writes to
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/mnt/runs" in mounts
    yaml.safe_load(spec["runtimeEnvYAML"])
