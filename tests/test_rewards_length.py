"""Every length reward pinned to hand-computed values, edge cases included."""
import itertools

import pytest

from rlcomp.rewards.length import (aes, arora_zanette, dapo_overlong, kimi, l1_exact, l1_max, o1_pruner,
                                   shorter_better)


def test_o1_pruner_paper_form():
    # L_ref = 100, A_ref = 0.5, lambda = 2: R = 100/L - 1 + 2 * (A - 0.5)
    assert o1_pruner(50, 1.0, 100, 0.5) == pytest.approx(1.0 + 1.0)
    assert o1_pruner(200, 0.0, 100, 0.5) == pytest.approx(-0.5 - 1.0)
    assert o1_pruner(100, 0.5, 100, 0.5) == pytest.approx(0.0)
    assert o1_pruner(0, 1.0, 100, 0.5) == pytest.approx(99 + 1.0)  # an empty response counts as length 1


def test_o1_pruner_lambda_zero_is_length_only():
    assert o1_pruner(50, 1.0, 100, 0.5, lam=0) == pytest.approx(1.0)
    assert o1_pruner(50, 0.0, 100, 0.5, lam=0) == pytest.approx(1.0)
    assert o1_pruner(400, 1.0, 100, 0.0, lam=0) == pytest.approx(-0.75)


def test_o1_pruner_options():
    # length 10: the length term is 9, unbounded above (the risk DESIGN.md names)
    assert o1_pruner(10, 1.0, 100, 0.5, clip_length=(-1, 1)) == pytest.approx(1 + 1)
    assert o1_pruner(10, 1.0, 100, 0.5, clip=(-2, 4)) == pytest.approx(4)  # official code's clip of R
    assert o1_pruner(1000, 0.0, 100, 1.0, clip=(-2, 4)) == pytest.approx(-2)
    # paper form pays a short wrong answer; length_credit="correct" does not
    assert o1_pruner(10, 0.0, 100, 0.5) == pytest.approx(9 - 1)
    assert o1_pruner(10, 0.0, 100, 0.5, length_credit="correct") == pytest.approx(0 - 1)
    assert o1_pruner(200, 0.0, 100, 0.5, length_credit="correct") == pytest.approx(-0.5 - 1)


def test_kimi_penalty():
    # min 10, max 30: lambda = 0.5, 0.0, -0.5
    assert kimi([10, 20, 30], [True, False, True]) == pytest.approx([0.5, 0.0, -0.5])
    assert kimi([10, 20, 30], [False, True, False]) == pytest.approx([0.0, 0.0, -0.5])
    assert kimi([30, 10], [False, False]) == pytest.approx([-0.5, 0.0])
    assert kimi([25, 20, 10, 30], [True] * 4) == pytest.approx([-0.25, 0.0, 0.5, -0.5])


def test_kimi_all_lengths_equal_gives_zero():
    assert kimi([7, 7, 7], [True, False, True]) == [0.0, 0.0, 0.0]
    assert kimi([5], [True]) == [0.0]


def test_l1_exact_and_max():
    assert l1_exact(1100, True, 1000) == pytest.approx(1 - 3e-4 * 100)
    assert l1_exact(900, False, 1000) == pytest.approx(-0.03)
    assert l1_max(1020, True, 1000) == pytest.approx(0.3)  # 0.01 * (-20) + 0.5
    assert l1_max(900, True, 1000) == pytest.approx(1.0)  # clipped from 1.5
    assert l1_max(1100, True, 1000) == pytest.approx(0.0)  # clipped from -0.5
    assert l1_max(900, False, 1000) == 0.0


def test_dapo_overlong():
    # L_max 100, L_cache 20: free up to 80, then linear to -1 at 100, -1 beyond
    assert [dapo_overlong(n, 100, 20) for n in (50, 80, 90, 100, 120)] == pytest.approx([0, 0, -0.5, -1, -1])


def test_shorter_better():
    # SOL = 200, the shortest correct length
    assert shorter_better([100, 200, 300], [False, True, True]) == pytest.approx([-0.1, 2.0, 1.9])
    # none correct: SOL = the mean length, 200
    assert shorter_better([100, 300], [False, False]) == pytest.approx([-0.1, -0.1])


def test_arora_zanette():
    # correct lengths 100 and 200: mean 150, std 50 -> z = -1 and +1
    s_minus, s_plus = 0.2689414213699951, 0.7310585786300049
    got = arora_zanette([100, 200, 300], [True, True, False], [True, True, True])
    assert got == pytest.approx([1 - 0.1 * s_minus, 1 - 0.1 * s_plus, 0.0])
    # a correct answer cut off before EOS counts as wrong, and leaves the statistics
    got = arora_zanette([100, 200, 150], [True, True, True], [True, False, True])
    assert got == pytest.approx([1 - 0.1 * s_minus, 0.0, 1 - 0.1 * s_plus])
    # one correct response: zero spread, sigmoid(0) = 0.5
    assert arora_zanette([100, 5000], [True, False], [True, True]) == pytest.approx([0.95, 0.0])
    assert arora_zanette([1, 10**6], [True, True], [True, True])[1] == pytest.approx(1 - 0.1 * s_plus)


def test_a_wrong_answer_never_earns_a_positive_length_reward():
    lengths = [1, 5, 50, 99, 100, 101, 500, 5000]
    for group in itertools.combinations(lengths, 3):
        for correct in itertools.product([False, True], repeat=3):
            wrong = [i for i, ok in enumerate(correct) if not ok]
            for values in (kimi(list(group), list(correct)), shorter_better(list(group), list(correct)),
                           arora_zanette(list(group), list(correct), [True] * 3)):
                assert all(values[i] <= 0 for i in wrong), (group, correct, values)
    for n in lengths:
        assert l1_exact(n, False, 100) <= 0 and l1_max(n, False, 100) == 0
        assert dapo_overlong(n, 100, 20) <= 0
        for ref_acc in (0.0, 0.5, 1.0):
            assert o1_pruner(n, 0.0, 100, ref_acc, length_credit="correct") <= 0


def test_aes():
    # O1-Pruner's lambda ablation on Marco-o1-7B: base 73.4 % / 932 tokens, lambda 0 -> 74.8 % / 527 (AES .49)
    assert aes(74.8, 527, 73.4, 932) == pytest.approx((932 - 527) / 932 + 3 * (74.8 - 73.4) / 73.4)
    assert round(aes(74.8, 527, 73.4, 932), 2) == 0.49


def test_aes_accuracy_drop_is_penalised_with_gamma():
    # base 80 % / 1000, now 76 % / 500: dL = 0.5, dAcc = -0.05 -> 0.5 - 5 * 0.05 (the v1 sign slip gave 0.65)
    assert aes(76, 500, 80, 1000) == pytest.approx(0.25)
    assert aes(76, 1000, 80, 1000) == pytest.approx(-0.25)
    assert aes(80, 1000, 80, 1000) == 0.0
