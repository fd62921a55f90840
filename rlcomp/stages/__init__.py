"""Stages, one per file. Each module has a pydantic `Config` (its `type` a Literal), `run(config, run: Run,
model: str | None) -> str | None` returning the stage's output model, if any, and `resources(config)`: what it
holds at once. Stage modules import torch, ray and vllm inside `run`, so validating a recipe loads none of them.
Adding a stage: its file, and one entry below."""
from typing import Annotated, Union

from pydantic import Field

from rlcomp.stages import (c3ot, ccot, coconut, cot_valve, dpo, eval, icot, make_model, merge, rl, sample, sft,
                           skip_steps, system2)

STAGES = {module.Config.model_fields["type"].default: module
          for module in (make_model, sft, rl, eval, sample, dpo, merge, c3ot, cot_valve, system2, skip_steps, icot,
                        coconut, ccot)}


def stage_union():
    """The recipe's `stages` item type: one of the registered stage configs, chosen by `type`."""
    configs = tuple(stage.Config for stage in STAGES.values())
    return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007 (dynamic union)
