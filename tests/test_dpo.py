"""DPO: Kimi's pairs, the loss pinned to hand values, and loss and metrics unchanged by how a step is split
over learner ranks and micro-batches (real Ray actors, real gloo FSDP2 groups)."""
import math
import random

import pytest
import torch

from rlcomp.losses import IGNORE, LOSSES
from rlcomp.stages.dpo import build_pairs, pair_batches


def pair_batch(ref_chosen=-1.2, ref_rejected=-2.0):
    """One pair over a 2-token vocabulary (logits = log p, target 0): chosen has response tokens of p 0.5 and
    0.8 (s_c = ln 0.4 = -0.9163), rejected 0.5, 0.5, 0.25 (s_r = ln 0.0625 = -2.7726); one prompt token."""
    p = torch.tensor([[0.9, 0.5, 0.8, 0.5], [0.9, 0.5, 0.5, 0.25]], dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()], -1).float()
    targets = torch.tensor([[IGNORE, 0, 0, IGNORE], [IGNORE, 0, 0, 0]])
    return logits, {"targets": targets, "ref_sequence_logprobs": torch.tensor([ref_chosen, ref_rejected]),
                    "step_pairs": 1}


@pytest.mark.parametrize("kwargs, expected", [
    # h = (s_c - ref_c) - (s_r - ref_r) = (-0.9163 + 1.2) - (-2.7726 + 2.0) = 1.0563
    ({"beta": 0.1}, 0.6417263),  # -log sigmoid(0.1 h)
    ({"beta": 0.1, "label_smoothing": 0.1}, 0.6522893),  # -0.9 log sigmoid(0.1 h) - 0.1 log sigmoid(-0.1 h)
    ({"beta": 0.1, "variant": "ipo"}, 15.5527855),  # (h - 1 / 0.2)^2
    ({"beta": 0.1, "variant": "simpo", "gamma": 0.5}, 0.9453234),  # -log sigmoid(0.1 (s_c / 2 - s_r / 3) - 0.5)
    ({"beta": 0.1, "nll_coef": 1.0}, 0.6417263 + 0.4581454),  # + the chosen's mean NLL, -s_c / 2
])
def test_dpo_loss_hand_values(kwargs, expected):
    logits, batch = pair_batch()
    loss, metrics = LOSSES["dpo"](logits, batch, **kwargs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    if kwargs.get("variant", "sigmoid") == "sigmoid":
        assert metrics["chosen_reward"] == pytest.approx(0.1 * (math.log(0.4) + 1.2), rel=1e-5)
        assert metrics["rejected_reward"] == pytest.approx(0.1 * (math.log(0.0625) + 2.0), rel=1e-5)
        assert metrics["reward_margin"] == pytest.approx(0.10562980, rel=1e-5)
        assert metrics["reward_accuracy"] == 1.0
    assert metrics["chosen_tokens"] == 2 and metrics["rejected_tokens"] == 3


def row(pid, tokens, correct):
    return {"id": pid, "tokens": tokens, "correct": correct, "response": f"{pid}-{tokens}-{correct}"}


def test_pairs_follow_kimi():
    rows = {"a": [row("a", 10, True), row("a", 12, True), row("a", 15, True), row("a", 9, False), row("a", 11, False)],
            "b": [row("b", 8, False), row("b", 20, False)],  # no correct sample: no pair
            "c": [row("c", 10, True), row("c", 14, True)]}  # 14 < 1.5 x 10 and nothing wrong: no pair
    pairs = build_pairs(rows, ratio=1.5, per_prompt=5, rng=random.Random(0))
    # chosen = a's 10-token correct; rejected: the 15-token correct (>= 15) and the 11-token wrong (longer),
    # not the 12-token correct (< 1.5x) nor the 9-token wrong (shorter than the chosen)
    assert sorted((c["tokens"], r["tokens"], r["correct"]) for c, r in pairs) == [(10, 11, False), (10, 15, True)]
    assert len(build_pairs(rows, ratio=1.5, per_prompt=1, rng=random.Random(0))) == 1


def test_pair_batches_keep_pairs_together():
    pairs = [(([1, 2, 3], 1), ([1, 2, 4, 5], 1)), (([1, 6], 1), ([1, 7, 8], 1)), (([1, 9], 1), ([1, 2, 2], 1))]
    batches = pair_batches(pairs, 2, pad_id=0)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2] and all(b["step_pairs"] == 3 for b in batches)
    assert batches[0]["input_ids"][0, :3].tolist() == [1, 2, 3] and batches[0]["input_ids"][2, :4].tolist() == [1, 2, 4, 5]


@pytest.mark.e2e
def test_dpo_loss_and_metrics_do_not_depend_on_ranks_or_micro_batches(ray_cluster, tiny_model):
    from rlcomp.batching import tokenize_examples
    from rlcomp.config import LearnerConfig, OptimConfig
    from rlcomp.data import get_task
    from rlcomp.learner import LearnerGroup
    from rlcomp.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    verbose = get_task("addition").generate(8, split="train", seed=0, cot="verbose")
    terse = get_task("addition").generate(8, split="train", seed=0, cot="terse")
    seqs = tokenize_examples(tokenizer, terse + verbose, max_length=256)
    pairs = list(zip(seqs[:8], seqs[8:]))
    ref = torch.linspace(-40, -20, 16)  # any fixed reference sums: the split must not matter
    results = {}
    for ranks, micro in [(1, 1), (1, 4), (2, 2), (2, 4)]:
        group = LearnerGroup(tiny_model, LearnerConfig(num_workers=ranks, mixed_precision="fp32"), OptimConfig(lr=1e-3))
        try:
            batches = pair_batches(pairs, micro, tokenizer.pad_token_id)
            for i, b in enumerate(batches):
                part = list(range(8))[i::micro]
                b["ref_sequence_logprobs"] = torch.cat([ref[part], ref[[8 + j for j in part]]])
            results[(ranks, micro)] = group.train_step(batches, "dpo", beta=0.1)
        finally:
            group.shutdown()
    base = results[(1, 1)]
    assert 0 < base["reward_accuracy"] < 1 or base["reward_margin"] != 0
    for key, metrics in results.items():
        for name in ("loss", "reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward", "chosen_tokens"):
            assert metrics[name] == pytest.approx(base[name], rel=1e-5, abs=1e-6), (key, name)
