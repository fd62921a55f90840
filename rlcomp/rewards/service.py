"""`RewardService`: the scorer inside a Ray actor, its verifier pool as wide as the CPUs the actor is given.

Start it with `start_reward_service(spec, num_cpus=2)`: that also ships the driver's `@reward` registrations to
the actor (a function defined in a driver script cannot be imported there, but Ray can pickle it by value).
The actor stays alive after any bad input: a hanging or crashing verification scores 0, and a failing user
function raises its `RewardError` to the caller only.
"""
from __future__ import annotations

import ray

from rlcomp.rewards.compose import CustomPart, RewardSpec
from rlcomp.rewards.reference import ReferenceTable
from rlcomp.rewards.registry import REGISTRY, RewardFunction
from rlcomp.rewards.scorer import Scorer
from rlcomp.sample import Sample


@ray.remote
class RewardService:
    def __init__(self, spec: RewardSpec | dict, reference: ReferenceTable | None = None,
                 functions: dict[str, RewardFunction] | None = None):
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        self.scorer = Scorer(spec, reference, functions, workers=max(1, int(cpus)))

    def score(self, groups: list[list[Sample]], step: int = 0) -> list[list[Sample]]:
        return self.scorer.score(groups, step)

    def reference_table(self, groups: list[list[Sample]]) -> ReferenceTable:
        return self.scorer.reference_table(groups)

    def set_reference(self, table: ReferenceTable) -> None:
        self.scorer.set_reference(table)

    def logged_metrics(self) -> dict[str, float]:
        return self.scorer.logged_metrics()

    def counts(self) -> dict[str, int]:
        """Verifications so far by outcome: ok, timeout, error, crashed."""
        return dict(self.scorer.counts)


def start_reward_service(spec: RewardSpec | dict, reference: ReferenceTable | None = None, num_cpus: int = 1):
    """A `RewardService` actor using `num_cpus` cores, with the driver's registered functions that the spec uses."""
    import weakref

    from rlcomp.cluster import name_actor, release, reserve

    spec = RewardSpec.model_validate(spec)
    functions = {p.name: REGISTRY[p.name] for p in spec.parts if isinstance(p, CustomPart) and p.name in REGISTRY}
    reservation = reserve(f"reward service ({num_cpus} CPU)", [{"CPU": num_cpus}])
    service = RewardService.options(num_cpus=num_cpus).remote(spec, reference, functions)
    weakref.finalize(service, release, reservation)  # Ray ends the actor when its last handle goes
    return name_actor(service, "reward service")
