"""Stages, one per file. Each module has a pydantic `Config` (its `type` a Literal) and
`run(config, run: Run, model: str | None) -> str | None` returning the stage's output model, if any."""
from rlcomp.stages import eval, make_model, rl, sft

STAGES = {module.Config.model_fields["type"].default: module for module in (make_model, sft, rl, eval)}
