"""Custom reward functions: a user's file outside the package, verl and TRL functions unchanged, the
decorator, async functions, and errors that name the function and the sample."""
import asyncio
import textwrap
import time

import pytest

from rlcomp.rewards import RewardError, Scorer, reward
from rlcomp.rewards.registry import REGISTRY, detect_form
from rlcomp.sample import Sample

USER_FILE = '''
import asyncio


def brevity(sample, scale=1.0):
    return scale / (1 + sample.length)


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's signature, as in verl/utils/reward_score."""
    return {"score": float(ground_truth in solution_str), "source": data_source}


def ends_with_period(completions, **kwargs):
    """TRL's signature, as in TRL's docs."""
    return [1.0 if c.endswith(".") else 0.0 for c in completions]


def answer_in_prompt(prompts, completions, answer, difficulty, **kwargs):
    return [float(d == "hard") + float(a in p) for p, a, d in zip(prompts, answer, difficulty)]


def rank_in_group(group, step=0):
    order = sorted(range(len(group)), key=lambda i: group[i].length)
    return [float(order.index(i)) + step for i in range(len(group))]


async def slow_length(sample):
    await asyncio.sleep(0.3)
    return float(sample.length)


def fragile(sample):
    if sample.response == "boom":
        raise ValueError("cannot score this")
    return 1.0


def not_a_number(sample):
    return "high"
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_FILE))
    return path


def groups():
    return [[Sample("what is 3+4?", "It is 7.", "7", data_source="toy", extra={"difficulty": "easy"}),
             Sample("what is 3+4?", "8", "7", data_source="toy", extra={"difficulty": "easy"})],
            [Sample("7 or 8?", "so 8", "8", data_source="toy", extra={"difficulty": "hard"})]]


def score(parts, step=0):
    scored = groups()
    with Scorer({"verifier": None, "parts": parts}) as scorer:
        scorer.score(scored, step)
    return scored


def values(scored, name):
    return [s.rewards[name] for g in scored for s in g]


def test_function_from_a_user_file_through_the_spec(user_file):
    name = f"{user_file}:brevity"
    scored = score([{"name": name, "weight": 2.0, "params": {"scale": 10}}])
    assert values(scored, name) == pytest.approx([10 / 9, 10 / 2, 10 / 5])
    assert [s.reward for g in scored for s in g] == pytest.approx([20 / 9, 10, 4])


def test_verl_and_trl_functions_run_unchanged(user_file):
    verl, trl, trl_columns = (f"{user_file}:{n}" for n in ("compute_score", "ends_with_period", "answer_in_prompt"))
    scored = score([{"name": verl}, {"name": trl}, {"name": trl_columns}])
    assert values(scored, verl) == [1.0, 0.0, 1.0]
    assert values(scored, trl) == [1.0, 0.0, 0.0]
    assert values(scored, trl_columns) == [0.0, 0.0, 2.0]  # answer and the extra column arrive as lists


def test_group_form_gets_the_step(user_file):
    name = f"{user_file}:rank_in_group"
    assert values(score([{"name": name}], step=10), name) == [11.0, 10.0, 10.0]


def test_async_function_calls_run_concurrently(user_file):
    name = f"{user_file}:slow_length"
    start = time.monotonic()
    scored = score([{"name": name}])
    assert values(scored, name) == [8.0, 1.0, 4.0]
    assert time.monotonic() - start < 0.3 * 3  # three 0.3 s calls overlapped

    async def caller_with_its_own_loop():
        return score([{"name": name}])

    assert values(asyncio.run(caller_with_its_own_loop()), name) == [8.0, 1.0, 4.0]


def test_decorator_registers_a_name_for_recipes():
    @reward("dot_bonus")
    def bonus(sample, amount=1.0):
        return amount * sample.response.count(".")

    @reward
    def group_size(samples):
        return [float(len(samples))] * len(samples)

    try:
        assert REGISTRY["dot_bonus"].form == "sample" and REGISTRY["group_size"].form == "group"
        scored = score([{"name": "dot_bonus", "params": {"amount": 0.5}}, {"name": "group_size"}])
        assert values(scored, "dot_bonus") == [0.5, 0.0, 0.0]
        assert values(scored, "group_size") == [2.0, 2.0, 1.0]
    finally:
        REGISTRY.pop("dot_bonus"), REGISTRY.pop("group_size")
    with pytest.raises(ValueError, match="taken by a builtin"):
        reward("kimi")(bonus)


def test_a_raising_function_is_named_with_the_sample(user_file):
    scored = groups()
    scored[1][0].response = "boom"
    with Scorer({"verifier": None, "parts": [{"name": f"{user_file}:fragile"}]}) as scorer:
        with pytest.raises(RewardError) as info:
            scorer.score(scored)
    message = str(info.value)
    assert "fragile" in message and "my_rewards.py" in message and "sample 0 of group 1" in message
    assert "'7 or 8?'" in message and "ValueError: cannot score this" in message


def test_a_bad_return_value_is_named(user_file):
    with pytest.raises(RewardError, match=r"not_a_number.*returned 'high', expected a finite number.*sample 0 of group 0"):
        score([{"name": f"{user_file}:not_a_number"}])


def test_unknown_names_and_missing_files_fail_clearly(tmp_path):
    with pytest.raises(KeyError, match="unknown reward 'nothing_here'"):
        score([{"name": "nothing_here"}])
    with pytest.raises(FileNotFoundError, match="reward file not found"):
        score([{"name": f"{tmp_path}/absent.py:f"}])


def test_form_detection():
    def verl(data_source, solution_str, ground_truth, extra_info=None): ...
    def trl(prompts, completions, **kw): ...
    def per_group(group): ...
    def per_sample(sample): ...
    assert [detect_form(f) for f in (verl, trl, per_group, per_sample)] == ["verl", "trl", "group", "sample"]
