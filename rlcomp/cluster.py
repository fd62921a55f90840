"""The Ray cluster a run uses: an embedded local one by default, or an existing one via RAY_ADDRESS."""
from __future__ import annotations

import os

import ray


# Workers inherit these: no per-actor tqdm bars from transformers, no tokenizers fork warnings, and vLLM's
# warnings only (its INFO lines run to a hundred per engine start). Each may be overridden from the environment.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
             "VLLM_LOGGING_LEVEL": "WARNING"}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / RAY_ADDRESS (as under `ray job submit`), else start a local cluster."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a stale token file would otherwise turn auth on
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            # Logical CPUs for scheduling. Rollout workers, learners and the reward service take turns on a
            # laptop's few cores (rollout, reward and training alternate), so advertise at least 8.
            num_cpus=num_cpus or max(8, os.cpu_count() or 1),
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )


def device_for(gpus: float) -> str:
    return "cuda" if gpus > 0 else "cpu"
