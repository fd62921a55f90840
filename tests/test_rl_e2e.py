"""End to end: 2 FSDP2 learner ranks, a rollout worker and the reward service running GRPO on the tiny model."""
import json
import shutil

import pytest

from rlcomp.config import validate_recipe
from rlcomp.pipeline import run_recipe

pytestmark = pytest.mark.e2e

REWARD_FILE = '''
def brevity(sample):
    """A user reward outside the package: shorter is better (the untrained model rarely stops)."""
    return 1.0 - sample.length / 24
'''


def recipe(model, reward_path, max_steps, **rl):
    stage = {"name": "grpo", "type": "rl", "algorithm": "grpo", "data": {"dataset": "addition", "n": 64},
             "reward": {"verifier": "auto", "parts": [{"name": f"{reward_path}:brevity"}]},
             "rollout": {"engine": "hf", "n": 8, "temperature": 1.0, "max_tokens": 24},
             "prompts_per_step": 8, "max_steps": max_steps, "checkpoint_every": 2,
             "optim": {"lr": 3e-3, "schedule": "constant"}, "learner": {"num_workers": 2}, **rl}
    return validate_recipe({"model": model, "seed": 3, "stages": [stage]})


def steps(out):
    return [json.loads(line) for line in (out / "stages" / "grpo" / "steps.jsonl").read_text().splitlines()]


def test_grpo_reward_rises_and_resume_continues_with_the_same_data(ray_cluster, tiny_model, tmp_path):
    reward_path = tmp_path / "user_rewards.py"
    reward_path.write_text(REWARD_FILE)
    full = tmp_path / "full"
    run_recipe(recipe(tiny_model, reward_path, 8), full)
    rewards = [row["reward/total"] for row in steps(full)]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.05, rewards
    assert (full / "stages" / "grpo" / "model" / "config.json").is_file()

    # An interrupted run: it stopped after its checkpoint at step 2 (no done marker), then is resumed.
    part = tmp_path / "part"
    run_recipe(recipe(tiny_model, reward_path, 2), part)
    (part / "stages" / "grpo" / "done.json").unlink()
    shutil.rmtree(part / "stages" / "grpo" / "model")
    run_recipe(recipe(tiny_model, reward_path, 4), part, resume=True)
    resumed = steps(part)
    assert [row["step"] for row in resumed] == [1, 2, 3, 4]
    assert [row["prompts"] for row in resumed] == [row["prompts"] for row in steps(full)[:4]]
    assert resumed[2]["reward/total"] == pytest.approx(steps(full)[2]["reward/total"], abs=0.05)
