"""The in-process scorer: verifies every sample in a killable process pool, then computes each reward part.

`RewardService` (service.py) is this inside a Ray actor; the eval stage and tests use it directly.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict

from rlcomp.rewards.compose import RewardSpec, build_parts
from rlcomp.rewards.reference import ReferenceTable
from rlcomp.rewards.registry import RewardFunction
from rlcomp.rewards.verifiers import get_verifier, verifier_pool
from rlcomp.sample import Sample

log = logging.getLogger(__name__)


class Scorer:
    """`Scorer(spec).score(groups, step)` fills `sample.rewards[part]` for every part (and "accuracy", the
    verifier's score, always) and `sample.reward`, the weighted sum of the parts; returns the groups, in order.

    `workers` is the pool size when the spec sets none (default: all cores). `functions` maps custom part names
    to functions, ahead of the `@reward` registry. Call `close()` (or use `with`) to stop the worker processes.
    """

    def __init__(self, spec: RewardSpec | dict, reference: ReferenceTable | None = None,
                 functions: dict[str, RewardFunction] | None = None, workers: int | None = None):
        self.spec = RewardSpec.model_validate(spec)
        self.functions = functions
        self.logged: defaultdict[str, list[float]] = defaultdict(list)  # what reward functions log (log_metric)
        self.parts = build_parts(self.spec, reference, functions, self._log_metric)
        if self.spec.verifier not in (None, "auto"):
            get_verifier(self.spec.verifier)  # an unloadable verifier fails here, not as N silent zeros
        self.pool = None
        if self.spec.verifier:
            self.pool = verifier_pool(self.spec.verifier, self.spec.workers or workers, self.spec.timeout)
        self.counts: Counter[str] = Counter()  # verifications by outcome: ok, timeout, error, crashed

    def set_reference(self, table: ReferenceTable) -> None:
        """Hand O1-Pruner its reference table (it takes precedence over a `reference:` file in the spec)."""
        self.parts = build_parts(self.spec, table, self.functions, self._log_metric)

    def _log_metric(self, name: str, value: float) -> None:
        self.logged[name].append(float(value))

    def logged_metrics(self) -> dict[str, float]:
        """The means of what reward functions logged since the last call, as `reward_log/<name>`."""
        means = {f"reward_log/{k}": sum(v) / len(v) for k, v in self.logged.items() if v}
        self.logged.clear()
        return means

    def _verifier_for(self, sample: Sample) -> str:
        if self.spec.verifier != "auto":
            return self.spec.verifier
        from rlcomp.data import verifier_for  # lazily: the data package is not needed to import rewards

        return verifier_for(sample.data_source) if sample.data_source else "math"

    def verify(self, samples: list[Sample]) -> None:
        """Set `rewards["accuracy"]` on each sample; a timeout, error or crash scores 0 and is counted."""
        options = self.spec.verifier_options
        outcomes = self.pool.map([(self._verifier_for(s), s.response, s.answer, options) for s in samples])
        failed = [o for o in outcomes if o.status != "ok"]
        if failed:
            log.warning("%d of %d verifications failed (scored 0); first: %s %s",
                        len(failed), len(outcomes), failed[0].status, failed[0].message)
        for sample, outcome in zip(samples, outcomes):
            sample.rewards["accuracy"] = outcome.value if outcome.status == "ok" else 0.0
            self.counts[outcome.status] += 1

    def score(self, groups: list[list[Sample]], step: int = 0) -> list[list[Sample]]:
        samples = [s for group in groups for s in group]
        if self.pool is not None:
            self.verify(samples)
        for part in self.parts:
            for group, values in zip(groups, part.scores(groups, step)):
                for sample, value in zip(group, values):
                    sample.rewards[part.name] = value
        for s in samples:
            s.reward = sum(part.weight * s.rewards[part.name] for part in self.parts)
        return groups

    def reference_table(self, groups: list[list[Sample]]) -> ReferenceTable:
        """O1-Pruner's reference table from samples of the reference model (verified here)."""
        self.verify([s for group in groups for s in group])
        return ReferenceTable.from_groups(groups)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
