"""TRL's own reward functions, unchanged, in a recipe: they get what TRL's GRPOTrainer gives them, and score
TRL's docstring examples as the docstrings say."""
import textwrap

import pytest
import yaml

from rlcomp.config import load_recipe
from rlcomp.rewards import Scorer
from rlcomp.sample import Sample

pytest.importorskip("trl")

THIRD = r"\frac{1}{3}"
# (reward part as a recipe writes it, completions, completion lengths, the scores TRL's docstring gives)
DOCSTRING_EXAMPLES = {
    "accuracy_reward": ({"name": "trl.rewards:accuracy_reward"},
                        [r"My answer is \boxed{\frac{1}{3}}", r"My answer is \boxed{\frac{1}{2}}"], [5, 5], [1.0, 0.0]),
    "think_format_reward": ({"name": "trl.rewards:think_format_reward"},
                            ["<think>\nThis is my reasoning.\n</think>\nThis is my answer.",
                             "<think>\nThis is my reasoning.\nThis is my answer."], [5, 5], [1.0, 0.0]),
    "reasoning_accuracy_reward": (
        {"name": "trl.rewards:reasoning_accuracy_reward", "params": {"reasoning_delimiters": ["</think>"]}},
        [r"<think> Reasoning content </think> The final answer is \boxed{\frac{1}{3}}",
         r"<think> Reasoning content </think> The final answer is \boxed{\frac{1}{2}}",
         r"<think> Reasoning content with partial answers \boxed{\frac{1}{3}} but no final answer"],
        [5, 5, 5], [1.0, 0.0, 0.0]),
    "get_soft_overlong_punishment": (
        {"name": "trl.rewards:get_soft_overlong_punishment",
         "factory_args": {"max_completion_len": 100, "soft_punish_cache": 20}}, ["x"], [90], [-0.5]),
    "get_cosine_scaled_reward": ({"name": "trl.rewards:get_cosine_scaled_reward", "factory_args": {"max_len": 100}},
                                 [r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], [50, 50], [0.75, -0.75]),
}


def recipe_reward(tmp_path, model, part):
    """The reward spec of a recipe file that names the part, as a user writes it."""
    stage = {"name": "rl", "type": "rl", "data": {"dataset": "addition", "n": 8},
             "reward": {"verifier": None, "parts": [part]}}
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump({"model": model, "stages": [stage]}))
    return load_recipe(path).stages[0].reward


def group(prompts, completions, lengths, **extra):
    return [[Sample(prompt=p, response=c, answer="1/3", response_ids=[7] * n, extra={"solution": THIRD, **extra})
             for p, c, n in zip(prompts, completions, lengths)]]


@pytest.mark.parametrize("conversational", [False, True], ids=["text", "conversational"])
@pytest.mark.parametrize("name", list(DOCSTRING_EXAMPLES))
def test_trl_shipped_rewards_score_as_their_docstrings_say(tmp_path, tiny_model, name, conversational):
    part, completions, lengths, expected = DOCSTRING_EXAMPLES[name]
    prompts = [[{"role": "user", "content": f"q{i}"}] if conversational else f"q{i}" for i in range(len(lengths))]
    with Scorer(recipe_reward(tmp_path, tiny_model, part)) as scorer:
        [scored] = scorer.score(group(prompts, completions, lengths))
    assert [s.rewards[part["name"]] for s in scored] == pytest.approx(expected)


USER_FILE = '''
def reads_like_trl(prompts, completions, completion_ids, level, trainer_state, log_metric, log_extra, **kwargs):
    log_metric("mean_level", sum(level) / len(level))
    log_extra("level", level)
    return [float(isinstance(c, str)) + trainer_state.global_step for c in completions]


def asks_for_text(completions: list[str], **kwargs):
    return [float(c.startswith("<think>")) for c in completions]
'''


def test_trl_form_gets_columns_step_hooks_and_the_completion_form_it_asks_for(tmp_path, tiny_model):
    path = tmp_path / "user.py"
    path.write_text(textwrap.dedent(USER_FILE))
    chat = [[{"role": "user", "content": "q"}]] * 2
    texts = ["<think>a</think>b", "b"]
    for prompts, as_text in ((["q", "q"], 1.0), (chat, 0.0)):  # messages for conversational prompts
        with Scorer(recipe_reward(tmp_path, tiny_model, {"name": f"{path}:reads_like_trl"})) as scorer:
            [scored] = scorer.score(group(prompts, texts, [3, 3], level=2), step=5)
            assert [s.rewards[f"{path}:reads_like_trl"] for s in scored] == [5.0 + as_text] * 2
            assert scorer.logged_metrics() == {"reward_log/mean_level": 2.0}
            assert scorer.logged_metrics() == {}  # each step's own
        # an annotation asking for text gets text, conversational prompts or not
        with Scorer(recipe_reward(tmp_path, tiny_model, {"name": f"{path}:asks_for_text"})) as scorer:
            [scored] = scorer.score(group(prompts, texts, [3, 3]))
            assert [s.rewards[f"{path}:asks_for_text"] for s in scored] == [1.0, 0.0]
