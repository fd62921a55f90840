"""The Ray cluster a run uses: an embedded local one by default, or an existing one via RAY_ADDRESS."""
from __future__ import annotations

import logging
import os
import weakref

import ray

from rlcomp import QUIET_ENV
from rlcomp.schema import add_resources


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / RAY_ADDRESS (as under `ray job submit`), else start a local cluster."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a stale token file would otherwise turn auth on
    # When one learner rank dies, the others fail too (their collective lost a peer). The stage reports the
    # first failure in one line; Ray would print each sibling's as an "Unhandled error" traceback.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING)
        from rlcomp.report import console

        total = ray.cluster_resources()
        console.print(f"joined the Ray cluster at {ray.get_runtime_context().gcs_address} "
                      f"({fmt_resources({k: total.get(k, 0) for k in ('CPU', 'GPU')})})")
    else:
        ray.init(
            # Logical CPUs for scheduling. Rollout workers, learners and the reward service take turns on a
            # laptop's few cores (rollout, reward and training alternate), so advertise at least 8.
            num_cpus=num_cpus or max(8, os.cpu_count() or 1),
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            logging_level=logging.WARNING,  # stderr is for what went wrong: no "Started a local Ray instance"
        )


def device_for(gpus: float) -> str:
    return "cuda" if gpus > 0 else "cpu"


class PlacementError(RuntimeError):
    """Actors that this cluster cannot place."""


# What this driver's live actors hold ({token: (what, resources)}) and what each actor is, for error messages.
# Resources a run holds itself are never freed while it waits for more, so asking beyond the cluster's total
# less these can never succeed: that fails at once rather than after a timeout.
HELD: dict[int, tuple[str, dict[str, float]]] = {}
ACTORS: dict[str, tuple[str, weakref.ref]] = {}  # actor id (hex) -> ("learner rank 1", handle), ...


def fmt_resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items()) if v) or "nothing"


def reserve(what: str, bundles: list[dict[str, float]]) -> int:
    """Record that `what` is about to place `bundles`; raise PlacementError if the cluster never could."""
    asked, held = add_resources(bundles), add_resources(r for _, r in HELD.values())
    total = ray.cluster_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    short = [k for k, v in asked.items() if v and held.get(k, 0) + v > total.get(k, 0) + 1e-9]
    unfit = [b for b in bundles if not any(all(n.get(k, 0) >= v for k, v in b.items()) for n in nodes)]
    if (short or unfit) and not os.environ.get("RLCOMP_AUTOSCALING"):
        holders = ", ".join(w for w, _ in HELD.values())
        problem = (f"one of its bundles ({fmt_resources(unfit[0])}) is larger than any node" if unfit else
                   f"the cluster has {fmt_resources({k: total.get(k, 0) for k in asked})} in all"
                   + (f" and this run's {holders} already hold {fmt_resources({k: held.get(k, 0) for k in short})}" if held else ""))
        raise PlacementError(f"{what} asks for {fmt_resources(asked)}, which can never be placed: {problem}. Give the cluster "
                             "more (a small `ray start --head` cluster: --num-cpus=8; logical CPUs may share cores), "
                             "or ask for less (RLCOMP_AUTOSCALING=1 skips this check on an autoscaling cluster)")
    token = max(HELD, default=0) + 1
    HELD[token] = (what, asked)
    return token


def release(token: int | None) -> None:
    HELD.pop(token, None)


def name_actor(handle, what: str):
    """Remember what a live actor is, so that a message about its death can say which one died."""
    ACTORS[handle._actor_id.hex()] = (what, weakref.ref(handle))
    return handle


def kill(handles) -> None:
    """End actors on purpose (they are no longer live actors whose death would be news)."""
    for handle in handles:
        ACTORS.pop(handle._actor_id.hex(), None)
        ray.kill(handle)


def dead_actors(exc: BaseException | None = None) -> list[str]:
    """Which of this run's live actors have died: the one an error names, else every one that a ping finds dead."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ray.exceptions.RayActorError) and seen.actor_id in ACTORS:
            return [ACTORS[seen.actor_id][0]]
        seen = seen.__cause__ or getattr(seen, "cause", None)
    pings = {}
    for actor_id, (what, ref) in list(ACTORS.items()):
        if (handle := ref()) is None:
            ACTORS.pop(actor_id)
        else:
            pings[handle.__ray_ready__.remote()] = what
    answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=10)  # a busy actor may not answer: alive
    dead = []
    for ping in answered:
        try:
            ray.get(ping)
        except ray.exceptions.RayActorError:
            dead.append(pings[ping])
    return dead
