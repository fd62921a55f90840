"""Real Ray actors forming a real gloo process group, the model sharded with FSDP2."""
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcomp.batching import collate_packed, collate_padded, micro_batches, step_batches, tokenize_examples
from rlcomp.config import LearnerConfig, OptimConfig
from rlcomp.data import get_task
from rlcomp.learner import LearnerGroup, lr_factor
from rlcomp.losses import LOSSES
from rlcomp.models import load_tokenizer


@pytest.fixture(scope="module")
def sequences(tiny_model):
    examples = get_task("addition").generate(64, split="train", seed=0, cot="terse")
    return tokenize_examples(load_tokenizer(tiny_model), examples, max_length=128)


def test_two_fsdp2_ranks_train_and_gathered_checkpoint_matches(ray_cluster, tiny_model, sequences, tmp_path):
    tokenizer = load_tokenizer(tiny_model)
    optim = OptimConfig(lr=3e-3, warmup_steps=2)
    group = LearnerGroup(tiny_model, LearnerConfig(num_workers=2, mixed_precision="fp32"), optim, total_steps=30)
    try:
        steps = step_batches(sequences, 16, "bucket", random.Random(0))
        losses = [group.train_step(micro_batches(steps[i % len(steps)], 2, "bucket", tokenizer.pad_token_id), "sft")["loss"]
                  for i in range(30)]
        assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses

        probe = collate_padded(sequences[:4], tokenizer.pad_token_id)
        sharded_logits = group.logits(probe)
        group.save_model(tmp_path / "gathered")
    finally:
        group.shutdown()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gathered").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    mask = probe["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], sharded_logits[mask], rtol=1e-4, atol=1e-4)
    assert load_tokenizer(tmp_path / "gathered")("12+3=")["input_ids"] == tokenizer("12+3=")["input_ids"]


def test_packed_and_padded_batches_give_the_same_loss(tiny_model, sequences):
    """Packing must not let sequences attend to each other: same loss as padding, to float precision.
    (transformers builds the block-diagonal mask from position ids only when no KV cache is in use.)"""
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    pad = load_tokenizer(tiny_model).pad_token_id
    losses = {}
    for mode in ("pad", "pack"):
        [batch] = micro_batches(sequences[:8], 1, mode, pad)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        with torch.no_grad():
            losses[mode], _ = LOSSES["sft"](model(**inputs, use_cache=False).logits, batch)
    torch.testing.assert_close(losses["pack"], losses["pad"], rtol=1e-5, atol=1e-5)
    assert collate_packed(sequences[:8])["input_ids"].shape[0] == 1


def test_bucketed_steps_have_similar_lengths_and_cover_the_data(sequences):
    steps = step_batches(sequences, 8, "bucket", random.Random(0))
    assert sorted(map(id, (s for step in steps for s in step))) == sorted(map(id, sequences))
    spread = lambda step: max(len(s[0]) for s in step) - min(len(s[0]) for s in step)  # noqa: E731
    random_steps = step_batches(sequences, 8, "pad", random.Random(0))
    assert sum(map(spread, steps)) < sum(map(spread, random_steps))


def test_cosine_schedule_with_warmup():
    optim = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, optim, 110) == pytest.approx(0.1)
    assert lr_factor(9, optim, 110) == pytest.approx(1.0)
    assert lr_factor(60, optim, 110) == pytest.approx(0.55)
    assert lr_factor(110, optim, 110) == pytest.approx(0.1)
