"""Recipes: YAML files validated by pydantic before anything starts, with dotted command-line overrides.

A recipe is a list of named stages, each of a registered type (see `rlcomp/stages/`). Every stage's output
model feeds the next stage unless the stage names its own `model`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from rlcomp.prompts import PromptSpec
from rlcomp.schema import (ClusterConfig, LearnerConfig, OptimConfig, RecipeError, StageConfig, StageError,  # noqa: F401
                           Strict, check_model_path)  # (re-exported: config is where users look for them)


def build_recipe_model():
    from rlcomp.stages import stage_union

    class Recipe(Strict):
        model: str | None = None
        seed: int = 0
        output_dir: str | None = None
        prompt: PromptSpec = PromptSpec()  # every stage's, unless the stage sets its own
        cluster: ClusterConfig = ClusterConfig()
        stages: list[stage_union()] = Field(min_length=1)

        _check_model = field_validator("model")(classmethod(lambda cls, v: check_model_path(v)))

        @model_validator(mode="after")
        def _name_stages(self):
            seen = set()
            for i, stage in enumerate(self.stages):
                stage.name = stage.name or f"{i}_{stage.type}"
                stage.prompt = stage.prompt or self.prompt
                if stage.name in seen:
                    raise ValueError(f"stage name {stage.name!r} is used twice")
                for path, spec in data_specs(stage, f"stages.{i}"):
                    if spec.from_stage and spec.from_stage not in seen:
                        raise ValueError(f"{path}.from_stage: {spec.from_stage!r} is not an earlier stage "
                                         f"(earlier: {', '.join(seen) or 'none'})")
                seen.add(stage.name)
            return self

    return Recipe


def data_specs(node, path: str):
    """(key path, DataSpec) for every `data:`-like block anywhere in a validated recipe."""
    from rlcomp.data import DataSpec

    if isinstance(node, DataSpec):
        yield path, node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from data_specs(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from data_specs(item, f"{path}.{i}")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from data_specs(item, f"{path}.{key}")


def _format_error(error: dict, raw: dict) -> str:
    loc = list(error["loc"])
    # Discriminated unions put the stage type into the location (stages.1.sft.lr): drop it.
    if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int):
        stage = (raw.get("stages") or [])[loc[1]] if isinstance(raw.get("stages"), list) else {}
        if isinstance(stage, dict) and loc[2] == stage.get("type"):
            del loc[2]
    path = ".".join(str(part) for part in loc) or "recipe"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "missing required key"
    return f"{path}: {message}"


def _by_name(raw, parts: list[str]) -> list[str]:
    """Key parts with list items named by their `name` (`stages.sft.lr`) replaced by their index."""
    node, out = raw, []
    for part in parts:
        if isinstance(node, list):
            names = [item.get("name") if isinstance(item, dict) else None for item in node]
            part = str(names.index(part)) if part in names else part
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
        out.append(part)
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; `stages.<name>.key` addresses a stage by name as well as by index (in
    any list of named items: a comparison's `methods.<method>.<stage>.key` too)."""
    config = OmegaConf.create(raw)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {override!r}: expected key=value")
        parts = _by_name(raw, key.split("."))
        try:
            OmegaConf.update(config, ".".join(parts), yaml.safe_load(text), merge=True, force_add=True)
        except Exception as exc:  # omegaconf raises many kinds; the user needs the key
            raise RecipeError(f"{key}: cannot apply override ({exc.__class__.__name__}: {exc})") from None
    return OmegaConf.to_container(config)


# --smoke: any recipe, end to end in minutes on CPU. Numbers are capped (min), GPUs dropped, data made synthetic.
SMOKE_MODEL = {"name": "smoke_model", "type": "make_model", "hidden_size": 64, "num_layers": 2, "num_heads": 2,
               "intermediate_size": 128, "max_position_embeddings": 512}
SMOKE_CAPS = {"max_steps": 2, "prompts_per_step": 4, "batch_size": 8, "max_tokens": 48, "n": 4, "samples": 2,
              "every": 2, "workers": 1, "num_workers": 2, "reward_cpus": 1, "updates_per_step": 2,
              "micro_batches": 2, "save_every": 2, "checkpoint_every": 1, "rounds": 1}
SMOKE_ZERO = ("gpus_per_worker",)


def smoke_shrink(node, key=None):
    """A recipe's (or any part's) smoke form: numbers capped, GPUs dropped, data synthetic, real models gone."""
    if isinstance(node, dict):
        if key == "data" or (isinstance(key, str) and key.endswith("_data")):  # data, val_data, eval_data, ood_data
            if "from_stage" in node:  # an earlier stage's samples: they are already small
                return node
            if "dataset" not in node:  # a mapping of named data sources (a comparison's eval)
                return {name: smoke_shrink(spec, key) for name, spec in node.items()}
            split = node.get("split", "train")
            synthetic = node["dataset"] in ("addition", "mixed_addition", "direction", "multiplication")
            return {"dataset": node["dataset"] if synthetic else "addition",
                    "split": "test" if split != "train" else "train",
                    "n": 64 if split == "train" else 8, "cot": node.get("cot", "verbose"),
                    **({"options": node["options"]} if synthetic and "options" in node else {})}
        out = {}
        for k, v in node.items():
            if k in SMOKE_ZERO:
                v = 0
            elif k in SMOKE_CAPS and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = min(v, SMOKE_CAPS[k])
            elif k in ("model", "table", "reference") and isinstance(v, str) and v != "start":
                continue  # a real model, or a precomputed table: replaced by the tiny model (`start` names it)
            elif k == "prompt" and isinstance(v, dict):
                continue  # a real model's chat template and system message: the tiny model has neither
            elif k in ("verifier", "engine") and isinstance(v, str):
                v = "auto"
            elif k == "samples_for" and isinstance(v, dict):
                v = {name: min(n, SMOKE_CAPS["samples"]) for name, n in v.items()}
            else:
                v = smoke_shrink(v, k)
            out[k] = v
        if isinstance(out.get("pass_k"), list):  # k at most the (capped) samples per problem
            fewest = min([out.get("samples", out.get("n", 1)), *out.get("samples_for", {}).values()])
            out["pass_k"] = sorted({min(k, fewest) for k in out["pass_k"]})
        return out
    if isinstance(node, list):
        return [smoke_shrink(v, key) for v in node]
    return node


def smoke_stages(stages: list) -> list:
    """Shrunk stages, evaluated on 16 test problems, starting with the tiny model unless they make one."""
    stages = list(stages or [])
    for stage in stages:
        if isinstance(stage, dict) and stage.get("type") == "eval" and isinstance(stage.get("data"), dict):
            stage["data"].update(split="test", n=16)
    if not any(isinstance(s, dict) and s.get("type") == "make_model" for s in stages):
        stages.insert(0, dict(SMOKE_MODEL))
    return stages


def smoke_recipe(raw: dict) -> dict:
    smoke = smoke_shrink(raw)
    smoke["stages"] = smoke_stages(smoke.get("stages"))
    smoke.pop("output_dir", None)
    return smoke


def read_mapping(path: str | Path, what: str = "recipe") -> dict:
    """A YAML file's top-level mapping, or RecipeError in one line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a {what} must be a mapping" + (" with a `stages` list" if what == "recipe" else ""))
    return raw


def load_recipe(path: str | Path, overrides: list[str] = (), smoke: bool = False):
    """Read, override and validate a recipe. Raises RecipeError with a one-line message. A recipe's
    `smoke_overrides` (a list of key=value) apply to its --smoke form only: what an untrained tiny model needs."""
    raw = read_mapping(path)
    smoke_overrides = raw.pop("smoke_overrides", None) or []
    if smoke:
        raw = apply_overrides(smoke_recipe(raw), list(smoke_overrides))
    return validate_recipe(apply_overrides(raw, list(overrides)), source=str(path))


def validate(model: type[BaseModel], raw: dict[str, Any], source: str):
    """`model` validated from `raw`, or RecipeError: the first problem's key path, and how many more."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e, raw) for e in exc.errors()]
        more = f" (and {len(lines) - 1} more: {'; '.join(lines[1:])})" if len(lines) > 1 else ""
        raise RecipeError(f"{source}: {lines[0]}{more}") from None


def validate_recipe(raw: dict[str, Any], source: str = "recipe"):
    return validate(build_recipe_model(), raw, source)
