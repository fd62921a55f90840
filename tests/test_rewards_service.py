"""The RewardService Ray actor on a real local Ray cluster."""
import os

import pytest
import ray

from rlcomp.rewards import RewardSpec, reward, start_reward_service
from rlcomp.rewards.registry import REGISTRY
from rlcomp.sample import Sample


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False)
    yield
    if started:
        ray.shutdown()


def test_service_scores_in_order_survives_bad_input_and_runs_driver_functions(local_ray):
    @reward("response_has_period")  # defined in the driver: the actor gets it by value
    def has_period(sample):
        if sample.response == "boom":
            raise ValueError("no")
        return float("." in sample.response)

    spec = RewardSpec.model_validate({"verifier": "math", "timeout": 5.0, "parts": [  # room on a loaded machine
        {"name": "accuracy"}, {"name": "kimi", "weight": 0.5}, {"name": "response_has_period", "weight": 0.1}]})
    try:
        service = start_reward_service(spec, num_cpus=2)
    finally:
        REGISTRY.pop("response_has_period")
    groups = [[Sample("1+1", r"so \boxed{2}.", "2"), Sample("1+1", r"\boxed{3}", "2")],
              [Sample("half", r"\boxed{0.5}", r"\frac{1}{2}"), Sample("tower", r"\boxed{9^{9^{9^{9}}}}", "1")]]
    scored = ray.get(service.score.remote(groups, step=0), timeout=60)
    assert [[s.prompt for s in g] for g in scored] == [["1+1", "1+1"], ["half", "tower"]]
    assert [[s.rewards["accuracy"] for s in g] for g in scored] == [[1.0, 0.0], [1.0, 0.0]]
    # group 0: lengths 13 and 9 -> Kimi -0.5 for the longer (correct), 0.5 -> min(0, .) = 0 for the wrong one
    assert [s.reward for s in scored[0]] == pytest.approx([1 - 0.25 + 0.1, 0.0])
    assert ray.get(service.counts.remote())["timeout"] == 1  # the power tower

    with pytest.raises(ray.exceptions.RayTaskError, match="response_has_period.*sample 0 of group 0"):
        ray.get(service.score.remote([[Sample("x", "boom", "1")]]), timeout=60)
    again = ray.get(service.score.remote([[Sample("1+1", r"\boxed{2}", "2")]]), timeout=60)
    assert again[0][0].rewards["accuracy"] == 1.0  # still alive
    ray.kill(service)
