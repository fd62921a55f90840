"""Advantage estimators pinned to hand-computed values."""
import pytest
import torch

from rlcomp.advantages import ADVANTAGES, gae, grpo_advantages, rloo_advantages, whiten


def test_registry():
    assert {"grpo", "rloo", "gae"} <= set(ADVANTAGES)


def test_grpo_group_normalised_and_all_equal_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = grpo_advantages(rewards)
    # group 1: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    assert adv[0].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    # group 2: all equal -> zero advantage, not NaN
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_dr_grpo_no_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = ADVANTAGES["grpo"](rewards, norm_std=False)
    assert adv.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]  # r - mean only


def test_single_sample_group_is_zero_not_nan():
    assert grpo_advantages(torch.tensor([[3.0]])).tolist() == [[0.0]]


def test_rloo_leave_one_out():
    # r=1: baseline mean(0, 0, 1) = 1/3 -> 2/3;  r=0: baseline mean(1, 0, 1) = 2/3 -> -2/3
    adv = rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert adv[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_gae_hand_values_and_masking():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    # row 0: three response tokens then padding (value 9 is garbage and must be ignored)
    # row 1: the same response behind one leading padding position
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0], [9.0, 0.5, 0.6, 0.7]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    # t=2: delta = 1 + 0.9*0 - 0.7 = 0.3                        A = 0.3
    # t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03;  A = 0.03 + 0.72*0.3   = 0.246
    # t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04;  A = 0.04 + 0.72*0.246 = 0.21712
    expected = [0.21712, 0.246, 0.3]
    assert adv[0].tolist() == pytest.approx(expected + [0.0], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([0.0] + expected, abs=1e-6)
    # returns = A + V: 0.21712 + 0.5, 0.246 + 0.6, 0.3 + 0.7
    assert ret[0].tolist() == pytest.approx([0.71712, 0.846, 1.0, 0.0], abs=1e-6)


def test_gae_skips_interior_masked_step():
    # the masked middle step is not a time step: same numbers as the 2-token response [0.6, 0.7]
    rewards = torch.tensor([[0.0, 5.0, 1.0]])
    values = torch.tensor([[0.6, 9.0, 0.7]])
    adv, _ = gae(rewards, values, torch.tensor([[1, 0, 1]]), gamma=0.9, lam=0.8)
    # t=2: A = 1 - 0.7 = 0.3;  t=0: delta = 0.9*0.7 - 0.6 = 0.03, A = 0.03 + 0.72*0.3 = 0.246
    assert adv[0].tolist() == pytest.approx([0.246, 0.0, 0.3], abs=1e-6)


def test_whiten_masked():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased var (1 + 0 + 1) / 2 = 1 -> [-1, 0, 1]; padding (100) ignored and zeroed
    assert whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)
