"""rlcomp: post-train reasoning models to reach the same answers with shorter chains of thought."""
import importlib as _importlib
import os as _os

# Workers inherit these: no per-actor tqdm bars from transformers, no tokenizers fork warnings, and vLLM's
# warnings only (its INFO lines run to a hundred per engine start). Each may be overridden from the environment.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
             "VLLM_LOGGING_LEVEL": "WARNING"}

for _key, _value in QUIET_ENV.items():  # before transformers is first imported: it reads them once
    _os.environ.setdefault(_key, _value)

# The public API, imported on first use (PEP 562): `import rlcomp.rewards.verifiers` in a reward worker process
# then costs milliseconds, not the seconds and hundreds of MB of torch and transformers.
_EXPORTS = {
    "load_recipe": "rlcomp.config", "validate_recipe": "rlcomp.config", "run_recipe": "rlcomp.pipeline",
    "make_tiny_model": "rlcomp.models", "DataSpec": "rlcomp.data", "load_examples": "rlcomp.data",
    "Example": "rlcomp.sample", "Sample": "rlcomp.sample", "reward": "rlcomp.rewards",
    "RewardSpec": "rlcomp.rewards", "Scorer": "rlcomp.rewards", "RewardService": "rlcomp.rewards",
    "start_reward_service": "rlcomp.rewards", "verify": "rlcomp.rewards", "aes": "rlcomp.rewards",
    "PromptSpec": "rlcomp.prompts", "PromptRenderer": "rlcomp.prompts",
    "load_comparison": "rlcomp.compare", "validate_comparison": "rlcomp.compare", "run_compare": "rlcomp.compare",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlcomp' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
