"""Eval metrics: the unbiased pass@k, accuracy as pass@1 over the samples, and results per level."""
import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from rlcomp.sample import Sample
from rlcomp.stages.eval import Config, pass_at_k, per_level, summarize


def test_pass_at_k_is_the_unbiased_estimate():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2) / C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3) / C(5,3)
    assert pass_at_k(5, 3, 3) == 1.0  # fewer wrong samples than k: some draw of k holds a right one


def test_summaries_overall_and_per_level():
    lengths = [[10, 20], [30, 40], [50, 60]]
    groups = [[Sample(prompt="q", response="", answer="", response_ids=[1] * n) for n in g] for g in lengths]
    scores = [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    overall = summarize(groups, scores, [1, 2])
    assert overall == {"n": 3, "samples": 6, "accuracy": pytest.approx(0.5), "mean_response_tokens": 35.0,
                       "pass@1": pytest.approx(0.5), "pass@2": pytest.approx(2 / 3)}
    levels = per_level([2, 1, 2], groups, scores, [2])
    assert list(levels) == ["1", "2"]
    assert levels["1"] == {"n": 1, "samples": 2, "accuracy": 0.0, "mean_response_tokens": 35.0, "pass@2": 0.0}
    assert levels["2"]["accuracy"] == pytest.approx(0.75) and levels["2"]["pass@2"] == 1.0
    with pytest.raises(ValidationError, match=r"pass_k \[4\]: each k must be between 1 and n \(2"):
        Config(data={"dataset": "addition"}, n=2, pass_k=[1, 4])


@pytest.mark.e2e
def test_rlcomp_eval_reports_pass_at_k_and_levels(tiny_model, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "rlcomp.cli", "eval", tiny_model, "--dataset", "addition", "--n", "6",
         "--samples", "4", "--temperature", "1.0", "--pass-k", "1", "4", "--max-tokens", "8", "--level-key", "n_steps", "--output-dir",
         str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    [row] = json.loads((out / "summary.json").read_text())["evals"]
    assert row["samples"] == 24 and row["n"] == 6 and {"pass@1", "pass@4"} <= set(row)
    assert row["pass@1"] == pytest.approx(row["accuracy"]) and row["pass@4"] >= row["pass@1"]
    assert row["by_level"]["3"]["n"] == 6  # every 3-digit addition takes 3 column steps
    assert "pass@4" in result.stdout


def test_eval_stages_share_one_rollout_group_switching_models_until_other_settings(ray_cluster, tiny_model, tmp_path):
    from rlcomp.data import DataSpec, load_examples
    from rlcomp.models import make_tiny_model
    from rlcomp.pipeline import Run
    from rlcomp.report import MetricLogger
    from rlcomp.rollout import RolloutGroup, SamplingParams
    from rlcomp.stages import eval as eval_stage

    run = Run(output_dir=tmp_path, seed=0, logger=MetricLogger(tmp_path / "tb"))
    greedy = Config(name="greedy", data={"dataset": "addition", "split": "test", "n": 4}, max_tokens=8)
    sampled = greedy.model_copy(update={"name": "sampled", "n": 2, "temperature": 1.0})
    run.stage = "greedy"
    eval_stage.run(greedy, run, tiny_model)
    first, workers = run.rollouts.group, list(run.rollouts.group.workers)
    run.stage = "sampled"
    eval_stage.run(sampled, run, tiny_model)
    assert run.rollouts.group is first  # the same workers: no second engine start
    assert [e["samples"] for e in run.evals] == [4, 8]
    run.stage = "sampled_again"  # seeded per evaluation: the same draws after the workers sampled before
    eval_stage.run(sampled.model_copy(update={"name": "sampled_again"}), run, tiny_model)
    responses = lambda stage: [json.loads(line)["response"]  # noqa: E731
                               for line in (tmp_path / "stages" / stage / "samples.jsonl").read_text().splitlines()]
    assert responses("sampled_again") == responses("sampled") and len(set(responses("sampled"))) > 1
    # Another model (as a comparison's next row) is switched into the running workers, and writes what a group
    # started on it writes.
    other_model = str(make_tiny_model(tmp_path / "other", hidden_size=64, num_layers=2, num_heads=2,
                                      intermediate_size=128, max_position_embeddings=256, seed=7))
    run.stage = "other"
    eval_stage.run(greedy.model_copy(update={"name": "other"}), run, other_model)
    assert run.rollouts.group is first and first.workers == workers and first.model_path == other_model
    # The switched workers compute the other model's log-probs, as a group started on it does (random tiny models
    # write alike tokens; their log-probs differ).
    examples, params = load_examples(DataSpec(**greedy.data.model_dump())), SamplingParams(max_tokens=8, logprobs=True)
    switched = [g[0] for g in first.generate(examples, params)]
    fresh = RolloutGroup(other_model, "hf")
    try:
        expected = [g[0] for g in fresh.generate(examples, params)]
    finally:
        fresh.shutdown()
    assert [s.response_ids for s in switched] == [s.response_ids for s in expected]
    flat = lambda samples: [x for s in samples for x in s.logprobs]  # noqa: E731
    assert flat(switched) == pytest.approx(flat(expected), abs=1e-5)
    first.switch(tiny_model)
    own = [g[0] for g in first.generate(examples, params)]
    assert flat(own) != pytest.approx(flat(expected), abs=1e-3)
    wider = greedy.model_copy(update={"name": "wider", "workers": 2})  # other settings: a new group
    run.stage = "wider"
    eval_stage.run(wider, run, tiny_model)
    assert run.rollouts.group is not first and len(run.rollouts.group.workers) == 2
    run.rollouts.close()
    assert run.rollouts.group is None
