"""Distilling System 2 into System 1: majority votes over the model's own answers (gold never read), the
perturbation check, answer-only training data; recipes/system2_distill.yaml's smoke form end to end."""
import json

import pytest

from rlcomp.config import load_recipe, validate_recipe
from rlcomp.sample import Example
from rlcomp.stages.system2 import Config, extractor, select, swap_operands, vote


def test_swap_operands_keeps_the_answer_and_names_a_prompt_without_operands():
    assert swap_operands("347+285=") == "285+347="
    assert swap_operands("Q: 12 * 7 = ?") == "Q: 7*12 = ?"
    with pytest.raises(ValueError, match="perturb swap_operands: no `a\\+b=` or `a\\*b=` in the prompt 'N:L,R='"):
        swap_operands("N:L,R=")


def test_vote_and_extractors():
    assert vote(["5", "5", "7", None]) == ("5", 0.5)
    assert vote([None, None]) == (None, 0.0)
    assert extractor("mixed_addition")("s1 2+3=5 w5 c0; ans 5") == "5"
    assert extractor("gsm8k")("so 1,200 in all\n#### 1,200") == "1200"
    assert extractor("math")("thus \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


def test_select_keeps_confident_majorities_that_survive_the_perturbation():
    examples = [Example(prompt=f"{i}+1=", answer="WRONG GOLD", id=str(i), extra={"level": 2}) for i in range(4)]
    votes = [[("2", 0.75), ("3", 0.25), (None, 0.0), ("5", 1.0)],  # question 1: too few votes; 2: no answer
             [("2", 1.0), ("3", 1.0), (None, 0.0), ("6", 0.5)]]   # question 3: the swapped form disagrees
    rows, kept = select(examples, votes, Config(data={"dataset": "addition"}, threshold=0.5))
    assert [r["kept"] for r in rows] == [True, False, False, False]
    assert [(k.prompt, k.response) for k in kept] == [("0+1=", "ans 2")]  # the majority, never the gold answer
    rows, kept = select(examples, votes[:1], Config(data={"dataset": "addition"}, threshold=0.5))
    assert [k.response for k in kept] == ["ans 2", "ans 5"]


def test_answer_template_must_name_the_answer():
    from rlcomp.config import RecipeError

    with pytest.raises(RecipeError, match="answer_template must be a format string using only {answer}"):
        validate_recipe({"stages": [{"type": "system2_distill", "data": {"dataset": "addition"},
                                     "answer_template": "{result}"}]})


@pytest.mark.e2e
def test_system2_recipe_smoke_run(ray_cluster, tmp_path):
    from rlcomp.pipeline import run_recipe

    # A tiny model taught addition for a few steps: it writes `ans <number>`, so there are answers to vote on.
    taught = validate_recipe({"seed": 0, "stages": [
        {"name": "m", "type": "make_model", "hidden_size": 64, "num_layers": 2, "num_heads": 2,
         "intermediate_size": 128},
        {"name": "sft", "type": "sft", "data": {"dataset": "addition", "n": 256, "cot": "none"}, "batch_size": 16,
         "max_steps": 30, "optim": {"lr": 3e-3}}]})
    model = run_recipe(taught, tmp_path / "taught")["final_model"]
    # Sampled at 0.3, not 0.7: this weak model's hotter samples rarely agree, and whether 8 questions reach a
    # quarter of the votes then hangs on the engine's random stream (hf passed, vLLM's kept none).
    recipe = load_recipe("recipes/system2_distill.yaml", [f"stages.distill.model={model}",
                                                           "stages.distill.temperature=0.3",
                                                           "stages.distill.perturb=swap_operands"], smoke=True)
    run_recipe(recipe, tmp_path / "run")
    stage = tmp_path / "run" / "stages" / "distill"
    rows = [json.loads(line) for line in (stage / "votes.jsonl").open()]
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["kept"] == sum(r["kept"] for r in rows) >= 8 and summary["questions"] == len(rows)
    assert all(r["share"] >= 0.25 and r["majority"] == r["perturbed_majority"] for r in rows if r["kept"])
    assert (stage / "model" / "config.json").is_file()
    evals = [e["stage"] for e in json.loads((tmp_path / "run" / "summary.json").read_text())["evals"]]
    assert evals == ["eval_system2", "eval_system1"]
