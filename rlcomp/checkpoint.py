"""RL checkpoints: the policy in Hugging Face format, sharded learner state (model, optimizer, scheduler, RNG)
via torch.distributed.checkpoint, and the loop's step and data position. Written to a temporary directory
and renamed into place, then `latest` is updated atomically: a crash never leaves a half checkpoint in use."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from rlcomp.report import write_atomic


def save_checkpoint(stage_dir: Path, step: int, position: int, policy, critic=None) -> Path:
    root = stage_dir / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_model(tmp / "model")
    policy.save_checkpoint(tmp / "policy")
    if critic is not None:
        critic.save_checkpoint(tmp / "critic")
    (tmp / "state.json").write_text(json.dumps({"step": step, "position": position}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    write_atomic(root / "latest", final.name)
    return final


def latest_checkpoint(stage_dir: Path) -> Path | None:
    pointer = stage_dir / "checkpoints" / "latest"
    return stage_dir / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None


def load_state(checkpoint: Path, policy, critic=None) -> tuple[int, int]:
    """Restore the learners from a checkpoint; returns (step, data position)."""
    policy.load_checkpoint(checkpoint / "policy")
    if critic is not None:
        critic.load_checkpoint(checkpoint / "critic")
    state = json.loads((checkpoint / "state.json").read_text())
    return state["step"], state["position"]
