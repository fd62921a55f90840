"""Policy, value, O1-Pruner and KL losses pinned to hand-computed values.

Logits are log-probabilities over a 2-token vocabulary, log([p, 1 - p]) with target 0, so log-softmax gives
back log p exactly and ratios are plain fractions: p = 0.9 against old p = 0.5 is a ratio of 1.8.
"""
import math

import pytest
import torch

from rlcomp.losses import IGNORE, LOSSES
from rlcomp.losses.kl import kl_estimate, kl_penalty_in_reward

NAN = float("nan")  # marks padding


def make_batch(p, old_p, adv, **extra):
    """p, old_p, adv: [B][T] lists; NaN in p marks padding (target IGNORE)."""
    p = torch.tensor(p, dtype=torch.float64)
    pad = p.isnan()
    p = p.nan_to_num(0.5)
    logits = torch.stack([p.log(), (1 - p).log()], -1).float().requires_grad_()
    targets = torch.where(pad, IGNORE, 0)
    keep = (~pad).float()
    batch = {"targets": targets, "old_logprobs": torch.tensor(old_p).log() * keep,
             "advantages": torch.tensor(adv) * keep, "step_target_tokens": int(keep.sum()),
             "step_sequences": len(p), **extra}
    return logits, batch


def test_registered():
    assert {"sft", "grpo", "ppo", "value", "o1_pruner"} <= set(LOSSES)


def test_ppo_clip_both_sides():
    # old p = 0.5 everywhere; ratios r = p / 0.5 = [1.8, 0.4, 0.4, 1.8, 1.0]; eps = 0.2
    logits, batch = make_batch([[0.9, 0.2, 0.2, 0.9, 0.5]], [[0.5] * 5], [[1.0, -1.0, 1.0, -1.0, 2.0]])
    loss, m = LOSSES["ppo"](logits, batch)
    # t0 A=+1 r=1.8: max(-1.8, -1.2) = -1.2   clipped (upper side)
    # t1 A=-1 r=0.4: max( 0.4,  0.8) =  0.8   clipped (lower side)
    # t2 A=+1 r=0.4: max(-0.4, -0.8) = -0.4   not clipped (pessimistic bound keeps the unclipped term)
    # t3 A=-1 r=1.8: max( 1.8,  1.2) =  1.8   not clipped
    # t4 A=+2 r=1.0: -2                        not clipped
    # token mean: (-1.2 + 0.8 - 0.4 + 1.8 - 2) / 5 = -1.0 / 5 = -0.2
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert m["pg_loss"] == pytest.approx(-0.2, abs=1e-6)
    assert m["clip_fraction"] == pytest.approx(2 / 5)
    assert m["ratio_mean"] == pytest.approx((1.8 + 0.4 + 0.4 + 1.8 + 1.0) / 5, abs=1e-6)
    assert m["entropy"] > 0
    loss.backward()
    grad = logits.grad.abs().sum(-1)[0]
    assert grad[0] == 0 and grad[1] == 0  # clipped tokens pass no gradient
    assert (grad[2:] > 0).all()


def test_dapo_asymmetric_clip():
    logits, batch = make_batch([[0.9, 0.2, 0.2, 0.9, 0.5]], [[0.5] * 5], [[1.0, -1.0, 1.0, -1.0, 2.0]])
    loss, _ = LOSSES["grpo"](logits, batch, clip_low=0.1, clip_high=0.28, aggregation="token_mean")
    # t0: clip(1.8) = 1.28 -> -1.28;  t1: clip(0.4) = 0.9 -> 0.9;  others as above
    # (-1.28 + 0.9 - 0.4 + 1.8 - 2) / 5 = -0.98 / 5 = -0.196
    assert loss.item() == pytest.approx(-0.196, abs=1e-6)


def two_lengths(**extra):
    # response 0 has 1 token (A=3), response 1 has 3 tokens (A=1); ratio 1, so per-token loss = -A
    return make_batch([[0.5, NAN, NAN], [0.5, 0.5, 0.5]], [[0.5, 1, 1], [0.5] * 3],
                      [[3.0, 0, 0], [1.0] * 3], **extra)


@pytest.mark.parametrize("aggregation, expected", [
    ("token_mean", (-3 - 3 * 1) / 4),    # all 4 tokens together: -1.5
    ("seq_mean", (-3 + -1) / 2),          # mean of each response, then of the 2 responses: -2.0
    ("constant", (-3 - 3 * 1) / (4 * 2)),  # Dr. GRPO: token sum / (max_response_length 4 * 2 responses): -0.75
])
def test_aggregations(aggregation, expected):
    logits, batch = two_lengths(max_response_length=4)
    loss, _ = LOSSES["grpo"](logits, batch, aggregation=aggregation)
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant"])
def test_micro_batches_sum_to_the_step(aggregation):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 7, generator=g)
    targets = torch.randint(0, 7, (4, 5), generator=g)
    targets[0, 3:] = IGNORE
    targets[2, :2] = IGNORE
    keep = (targets != IGNORE).float()
    batch = {"targets": targets, "old_logprobs": -torch.rand(4, 5, generator=g) * 3 * keep,
             "ref_logprobs": -torch.rand(4, 5, generator=g) * 3 * keep,
             "advantages": torch.randn(4, 1, generator=g).expand(4, 5) * keep,
             "step_target_tokens": int(keep.sum()), "step_sequences": 4, "max_response_length": 6}
    kw = dict(aggregation=aggregation, kl_coef=0.1, entropy_coef=0.01, temperature=0.7)
    whole, m_whole = LOSSES["ppo"](logits, batch, **kw)
    parts = [LOSSES["ppo"](logits[s], {k: v[s] if torch.is_tensor(v) else v for k, v in batch.items()}, **kw)
             for s in (slice(0, 1), slice(1, 4))]
    assert sum(p[0] for p in parts).item() == pytest.approx(whole.item(), abs=1e-6)
    for k in m_whole:
        assert sum(p[1][k] for p in parts) == pytest.approx(m_whole[k], abs=1e-6)


def test_temperature_scales_logits():
    # p = [0.8, 0.2] at temperature 2 -> softmax of log(p)/2 is proportional to sqrt(p) = 2:1 -> p = 2/3
    logits, batch = make_batch([[0.8]], [[2 / 3]], [[1.0]])
    assert LOSSES["ppo"](logits, batch, temperature=2.0)[1]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert LOSSES["ppo"](logits, batch)[1]["ratio_mean"] == pytest.approx(0.8 / (2 / 3), abs=1e-6)  # 1.2


def test_entropy_metric_and_bonus():
    logits, batch = make_batch([[0.5]], [[0.5]], [[0.0]])
    loss, m = LOSSES["ppo"](logits, batch, entropy_coef=0.1)
    assert m["entropy"] == pytest.approx(math.log(2), abs=1e-6)  # uniform over 2 tokens
    assert loss.item() == pytest.approx(-0.1 * math.log(2), abs=1e-6)  # pg is 0 (A=0); bonus lowers the loss


def test_kl_estimators():
    # samples from pi_theta: log pi = log 0.5, log pi_ref = log 0.25 -> log r = log(pi_ref/pi) = -log 2
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    log2 = math.log(2)
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(log2)               # -log r = 0.693147
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5 * log2 ** 2)    # 0.240227
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(0.5 - 1 + log2)     # r - 1 - log r = 0.193147
    with pytest.raises(ValueError):
        kl_estimate(lp, ref, "k4")
    pen = kl_penalty_in_reward(torch.tensor([[math.log(0.5)] * 2]), torch.tensor([[math.log(0.25)] * 2]),
                               torch.tensor([[1.0, 0.0]]), coef=0.1, estimator="k1")
    assert pen.tolist()[0] == pytest.approx([0.1 * log2, 0.0])


def test_kl_in_loss():
    # ratio 1 and A=0, so the loss is kl_coef * k3 = 0.5 * (0.5 - 1 + log 2)
    logits, batch = make_batch([[0.5]], [[0.5]], [[0.0]], ref_logprobs=torch.tensor([[math.log(0.25)]]))
    loss, m = LOSSES["grpo"](logits, batch, kl_coef=0.5, kl_estimator="k3")
    assert m["kl"] == pytest.approx(0.5 - 1 + math.log(2), abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * m["kl"], abs=1e-6)
    with pytest.raises(KeyError):  # asking for KL without a reference is an error, not a silent no-op
        LOSSES["grpo"](*make_batch([[0.5]], [[0.5]], [[0.0]]), kl_coef=0.5)


def o1_batch():
    # response 0: R = +1, pi_theta = [0.9, 0.5] vs pi_ref = [0.5, 0.5] -> token ratios [1.8, 1.0]
    # response 1: R = -1, pi_theta = [0.25, 0.25] vs pi_ref 0.5       -> token ratios [0.5, 0.5]
    logits, batch = make_batch([[0.9, 0.5], [0.25, 0.25]], [[0.5, 0.5]] * 2, [[1.0, 1.0], [-1.0, -1.0]])
    batch["ref_logprobs"] = batch.pop("old_logprobs")
    return logits, batch


def test_o1_pruner_token_ratio():
    loss, m = LOSSES["o1_pruner"](*o1_batch(), ratio="token")
    # response 0: -min(1.8, 1.2) = -1.2 (clipped), -min(1.0, 1.0) = -1.0 -> mean -1.1
    # response 1: -min(-0.5, -0.8) = 0.8 twice (both clipped)            -> mean  0.8
    # mean over responses: (-1.1 + 0.8) / 2 = -0.15;  clipped 3 of 4 tokens
    assert loss.item() == pytest.approx(-0.15, abs=1e-6)
    assert m["clip_fraction"] == pytest.approx(0.75)
    assert m["ratio_mean"] == pytest.approx((1.8 + 1.0 + 0.5 + 0.5) / 4, abs=1e-6)


def test_o1_pruner_sequence_ratio():
    loss, m = LOSSES["o1_pruner"](*o1_batch(), ratio="sequence")
    # response 0: r = exp(mean(log 1.8, log 1.0)) = sqrt(1.8) = 1.3416 -> clipped to 1.2 -> -1.2
    # response 1: r = exp(mean(log 0.5, log 0.5)) = 0.5 -> -min(-0.5, -0.8) = 0.8
    # (-1.2 + 0.8) / 2 = -0.2;  both responses clipped
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert m["clip_fraction"] == pytest.approx(1.0)
    assert m["ratio_mean"] == pytest.approx((math.sqrt(1.8) + 0.5) / 2, abs=1e-6)


def test_value_loss_clipping():
    values = torch.tensor([[0.9, 0.6, 0.0]]).unsqueeze(-1).requires_grad_()
    batch = {"targets": torch.zeros(1, 3, dtype=torch.long), "values_old": torch.tensor([[0.5, 0.5, 0.5]]),
             "returns": torch.tensor([[1.0, 0.0, 1.0]]), "step_target_tokens": 3, "step_sequences": 1}
    loss, m = LOSSES["value"](values, batch, value_clip=0.2)
    # t0: V=0.9 -> clipped 0.7: max((0.9-1)^2, (0.7-1)^2) = max(0.01, 0.09) = 0.09   clipped
    # t1: V=0.6 within 0.2 of 0.5: (0.6-0)^2 = 0.36
    # t2: V=0.0 -> clipped 0.3: max((0-1)^2, (0.3-1)^2) = max(1.0, 0.49) = 1.0       not clipped
    # 0.5 * (0.09 + 0.36 + 1.0) / 3 = 0.241667
    assert loss.item() == pytest.approx(0.5 * 1.45 / 3, abs=1e-6)
    assert m["vf_clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    assert values.grad[0, 0, 0] == 0 and values.grad[0, 1, 0] != 0
    unclipped, _ = LOSSES["value"](values, batch, value_clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.01 + 0.36 + 1.0) / 3, abs=1e-6)


def test_on_policy_without_old_logprobs():
    # One optimizer step per rollout batch: no old log-probs given means pi_old = pi_theta (ratio 1), and the
    # gradient is the policy gradient -A * grad log p, here per token of seq_mean over 1 sequence of 2 tokens.
    logits, batch = make_batch([[0.9, 0.2]], [[0.9, 0.2]], [[1.0, -2.0]])
    with_old = LOSSES["grpo"](logits, batch)[0]
    (grad_with_old,) = torch.autograd.grad(with_old, logits)
    del batch["old_logprobs"]
    loss, m = LOSSES["grpo"](logits, batch)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == pytest.approx(-(1.0 - 2.0) / 2) and m["ratio_mean"] == pytest.approx(1.0)
    assert torch.allclose(grad, grad_with_old)
