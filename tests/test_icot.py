"""Stepwise internalization (ICoT-SI): the removal schedule and smoothing on hand values, cutting chains, a
fresh optimizer equal to a new one, and the stage end to end on the tiny model until no chain is left."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcomp.config import LearnerConfig, OptimConfig
from rlcomp.data import get_task
from rlcomp.models import load_tokenizer
from rlcomp.stages.icot import chain_lengths, cut, offset_distribution, scheduled, steps_per_token


def test_removal_smoothing_distribution_on_hand_values():
    p = offset_distribution(4.0)
    assert len(p) == 100 and sum(p) == pytest.approx(1.0)
    assert p[0] == pytest.approx(1 - math.exp(-4)) == pytest.approx(0.98168, abs=1e-5)  # the paper's P(0) = 0.982
    assert p[1] == pytest.approx((1 - math.exp(-4)) * math.exp(-4)) == pytest.approx(0.017980, abs=1e-6)
    # truncated as the code does: three offsets with lambda 1 -> 0.632, 0.233, and the rest, e^-2, on the last
    assert offset_distribution(1.0, 3) == pytest.approx([1 - math.exp(-1), (1 - math.exp(-1)) * math.exp(-1),
                                                         math.exp(-2)])
    assert offset_distribution(None, 4) == [1.0, 0.0, 0.0, 0.0]


def test_removal_schedule_on_hand_values():
    # 800 examples in batches of 32: 25 steps per epoch, 8 tokens per epoch -> one more token every 3 steps
    assert steps_per_token(800, 32, 8) == 3 and steps_per_token(100, 32, 8) == 1
    assert [scheduled(t, 3, None) for t in range(8)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert scheduled(15, 3, 5) == math.inf and scheduled(14, 3, 5) == 4  # from 5 on, the whole chain goes


def test_cut_drops_chain_tokens_from_the_left_and_never_the_answer():
    prompt, chain, answer = [1, 2], [10, 11, 12, 13], [20, 21]
    seq = (prompt + chain + answer, 2)
    assert cut(seq, 4, 0) == (seq, 4)
    assert cut(seq, 4, 3) == (([1, 2, 13, 20, 21], 2), 1)
    assert cut(seq, 4, 9) == cut(seq, 4, math.inf) == (([1, 2, 20, 21], 2), 0)


def test_chain_lengths_split_the_response_at_the_answer(tiny_model):
    from rlcomp.batching import tokenize_examples

    tokenizer = load_tokenizer(tiny_model)
    examples = get_task("addition").generate(4, cot="terse")
    sequences = tokenize_examples(tokenizer, examples, 256)
    chains = chain_lengths(tokenizer, examples, sequences, "ans ", "icot")
    for example, (ids, prompt_len), n in zip(examples, sequences, chains):
        left = tokenizer.decode(ids[prompt_len + n:], skip_special_tokens=True)
        assert left == example.response[example.response.rfind("ans "):]  # what stays: the answer
        assert n > 0
    examples[0].response = "no marker here"
    with pytest.raises(ValueError, match="example addition/train/0: its response has no answer marker 'ans '"):
        chain_lengths(tokenizer, examples, sequences, "ans ", "icot")


def test_a_reset_optimizer_steps_like_a_new_one(ray_cluster, tiny_model, tmp_path):
    """After reset_optimizer, a step equals the first step of a new optimizer from the same weights (Adam's
    first step moves every weight by ~lr; a kept state would not)."""
    from rlcomp.batching import micro_batches, tokenize_examples
    from rlcomp.learner import LearnerGroup

    tokenizer = load_tokenizer(tiny_model)
    seqs = tokenize_examples(tokenizer, get_task("addition").generate(16, cot="terse"), 128)
    a, b = (micro_batches(seqs[i:i + 8], 1, "pad", tokenizer.pad_token_id) for i in (0, 8))
    learner, optim = LearnerConfig(num_workers=1, mixed_precision="fp32"), OptimConfig(lr=1e-2, schedule="constant")
    group = LearnerGroup(tiny_model, learner, optim, total_steps=4)
    for _ in range(3):
        group.train_step(a, "sft")
    group.save_model(tmp_path / "after_a")
    group.reset_optimizer()
    group.train_step(b, "sft")
    reset = group.state_dict()
    group.shutdown()
    fresh = LearnerGroup(str(tmp_path / "after_a"), learner, optim, total_steps=4)
    fresh.train_step(b, "sft")
    new = fresh.state_dict()
    fresh.shutdown()
    assert all(torch.allclose(reset[k], new[k], atol=1e-6) for k in new)


@pytest.mark.e2e
def test_icot_recipe_smoke_run_removes_the_whole_chain(ray_cluster, tmp_path):
    """recipes/icot.yaml in smoke form (tiny model, synthetic data), let run until no chain is left."""
    from rlcomp.config import load_recipe
    from rlcomp.pipeline import run_recipe

    recipe = load_recipe("recipes/icot.yaml", ["stages.internalize.max_steps=200", "stages.internalize.data.cot=terse",
                                               "stages.internalize.val_data.cot=terse",
                                               "stages.internalize.steps_after_removal=3"], smoke=True)
    summary = run_recipe(recipe, tmp_path / "run")
    schedule = json.loads((tmp_path / "run/stages/internalize/schedule.json").read_text())
    longest = schedule["longest_chain"]
    # 64 examples / 8 = 8 steps per epoch, 8 tokens per epoch: one token per step; the recipe's remove_all_beyond
    # (39, GSM8K's) drops the rest of a longer chain at once; then 3 more steps
    assert schedule["steps_per_token"] == 1 and schedule["steps"] == min(longest, 39) + 3
    removed = [v["removed"] for v in schedule["validation"]]
    assert removed == sorted(removed) and removed[-1] == longest and len(removed) == -(-schedule["steps"] // 8)
    assert all(0 <= v["answer_accuracy"] <= 1 for v in schedule["validation"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run/stages/internalize/model")  # a plain HF model
    assert model.config.model_type == "qwen2" and [e["stage"] for e in summary["evals"]] == ["eval_cot", "eval_no_cot"]
