"""rlcomp: post-train reasoning models to reach the same answers with shorter chains of thought."""
import os as _os

from rlcomp.cluster import QUIET_ENV as _QUIET_ENV

for _key, _value in _QUIET_ENV.items():  # before transformers is first imported: it reads them once
    _os.environ.setdefault(_key, _value)

from rlcomp.config import load_recipe, validate_recipe
from rlcomp.data import DataSpec, load_examples
from rlcomp.models import make_tiny_model
from rlcomp.pipeline import run_recipe
from rlcomp.rewards import RewardService, RewardSpec, Scorer, aes, reward, start_reward_service, verify
from rlcomp.sample import Example, Sample

__all__ = ["load_recipe", "validate_recipe", "run_recipe", "make_tiny_model", "DataSpec", "load_examples",
           "Example", "Sample", "reward", "RewardSpec", "Scorer", "RewardService", "start_reward_service",
           "verify", "aes"]
