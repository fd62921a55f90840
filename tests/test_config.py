import subprocess
import sys
import textwrap

import pytest

from rlcomp.config import RecipeError, load_recipe

RECIPE = """
seed: 1
stages:
  - name: make
    type: make_model
  - name: train
    type: sft
    data: {dataset: addition, n: 100}
    optim: {lr: 1.0e-3}
  - type: eval
    data: {dataset: addition, split: test, n: 10}
"""


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_recipe_and_overrides_by_name_and_index(tmp_path):
    recipe = load_recipe(write(tmp_path, RECIPE), ["stages.train.optim.lr=0.5", "stages.2.max_tokens=7", "seed=3"])
    assert recipe.seed == 3
    assert recipe.stages[1].optim.lr == 0.5
    assert recipe.stages[2].max_tokens == 7
    assert recipe.stages[2].name == "2_eval"  # unnamed stages get index_type names


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["stages.train.learning_rate=1"], "stages.1.learning_rate: unknown key"),
        (["stages.train.batch_size=many"], "stages.1.batch_size: Input should be a valid integer"),
        (["stages.make.model=./no/such/model"], "stages.0.model: model path './no/such/model' does not exist"),
        (["model=/no/such/dir"], "model: model path '/no/such/dir' does not exist"),
        (["stages.2.type=evaluate"], "stages.2: Input tag 'evaluate'"),
        (["stages.train.batching=zip"], "stages.1.batching: Input should be 'bucket', 'pack' or 'pad'"),
        (["stages.train.data.path=/nope.jsonl"], "stages.1.data.path"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, overrides, expected):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, RECIPE), overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_cli_reports_bad_recipe_in_one_line_without_traceback(tmp_path):
    path = write(tmp_path, RECIPE.replace("seed: 1", "seed: 1\nseeds: 2"))
    result = subprocess.run([sys.executable, "-m", "rlcomp.cli", "run", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip() == f"rlcomp: error: {path}: seeds: unknown key"
    assert "Traceback" not in result.stderr


def test_cli_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "rlcomp.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "run" in result.stdout and "eval" in result.stdout
