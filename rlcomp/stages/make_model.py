"""Stage `make_model`: create the small embedded model and its tokenizer (no download needed)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlcomp.schema import StageConfig


class Config(StageConfig):
    type: Literal["make_model"] = "make_model"
    architecture: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(512, gt=0)
    max_position_embeddings: int = Field(1024, gt=0)


def run(cfg: Config, run, model: str | None) -> str:
    from transformers import AutoModelForCausalLM

    from rlcomp.models import count_parameters, make_tiny_model
    from rlcomp.report import console

    path = make_tiny_model(
        run.stage_dir() / "model", architecture=cfg.architecture, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, seed=run.seed,
    )
    n = count_parameters(AutoModelForCausalLM.from_pretrained(path))
    console.print(f"made a {cfg.architecture} model with {n / 1e6:.2f}M parameters")
    return str(path)
