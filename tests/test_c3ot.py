"""C3oT: every question under both condition prefixes (long chain, compressed chain), the model recording its
conditions, and eval asking it either way; recipes/c3ot.yaml's smoke form end to end."""
import json
import random

import pytest

from rlcomp.config import load_recipe
from rlcomp.data import DataSpec, load_examples
from rlcomp.prompts import condition_prefix, save_conditions
from rlcomp.stages.c3ot import Config, compress, conditioned


def config(**kw) -> Config:
    return Config(data=DataSpec(dataset="mixed_addition", n=6), long_prefix="L: {question}",
                  short_prefix="S: {question}", **kw)


def test_each_question_once_under_each_prefix_with_its_terse_chain():
    examples = load_examples(DataSpec(dataset="mixed_addition", n=6))
    data = conditioned(examples, compress(config(), examples), config(), random.Random(0))
    assert len(data) == 12
    for e in examples:
        long = [d for d in data if d.prompt == f"L: {e.prompt}"]
        short = [d for d in data if d.prompt == f"S: {e.prompt}"]
        assert [d.response for d in long] == [e.response]
        assert [d.response for d in short] == [e.extra["terse"]]
        assert "wait" not in short[0].response and short[0].response.endswith(f"ans {e.answer}")
    assert any("wait" in e.response for e in examples)  # the long chains do over-think
    assert [d.extra["c3ot"] for d in data] != ["long"] * 6 + ["short"] * 6  # shuffled


def test_a_function_compressor_may_drop_questions(tmp_path):
    (tmp_path / "squeeze.py").write_text("def squeeze(e):\n    return None if e.extra['level'] == 4 else 'ans ' + e.answer\n")
    cfg = config(compressor=f"{tmp_path}/squeeze.py:squeeze")
    examples = load_examples(DataSpec(dataset="mixed_addition", n=12))
    data = conditioned(examples, compress(cfg, examples), cfg, random.Random(0))
    kept = [e for e in examples if e.extra["level"] != 4]
    assert 0 < len(kept) < 12 and len(data) == 2 * len(kept)  # a dropped question loses both forms
    assert all(d.response == f"ans {d.answer}" for d in data if d.prompt.startswith("S: "))


def test_terse_compressor_needs_a_synthetic_task(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4", "response": "two and two is 4"}) + "\n")
    examples = load_examples(DataSpec(dataset="qa", path=str(path)))
    with pytest.raises(ValueError, match="compressor terse: the examples carry no terse form"):
        compress(config(), examples)


def test_conditions_recorded_in_a_model(tmp_path):
    save_conditions(tmp_path, {"long": "L: {question}", "short": "S: {question}"}, default="short")
    assert condition_prefix(str(tmp_path)) == "S: {question}"
    assert condition_prefix(str(tmp_path), "long") == "L: {question}"
    with pytest.raises(ValueError, match=r"condition 'medium': the model .* knows \['long', 'short'\]"):
        condition_prefix(str(tmp_path), "medium")
    assert condition_prefix(str(tmp_path / "plain")) is None
    with pytest.raises(ValueError, match="condition 'long': the model .* was trained under no conditions"):
        condition_prefix(str(tmp_path / "plain"), "long")


@pytest.mark.e2e
def test_c3ot_recipe_smoke_run(ray_cluster, tmp_path):
    from rlcomp.pipeline import run_recipe

    recipe = load_recipe("recipes/c3ot.yaml", smoke=True)
    run_recipe(recipe, tmp_path)
    stage = tmp_path / "stages" / "c3ot"
    rows = [json.loads(line) for line in (stage / "data.jsonl").read_text().splitlines()]
    assert sorted(r["condition"] for r in rows) == ["long"] * (len(rows) // 2) + ["short"] * (len(rows) // 2)
    conditions = json.loads((stage / "model" / "rlcomp_conditions.json").read_text())
    assert conditions["default"] == "short"
    evals = {e["stage"]: e for e in json.loads((tmp_path / "summary.json").read_text())["evals"]}
    assert evals["eval_short"]["condition"] == conditions["conditions"]["short"]
    assert evals["eval_long"]["condition"] == conditions["conditions"]["long"]
    for name, prefix in (("eval_short", "Answer and provide as brief"), ("eval_long", "Answer and provide a detailed")):
        prompts = [json.loads(line)["prompt"] for line in (tmp_path / "stages" / name / "samples.jsonl").open()]
        assert prompts and all(p.startswith(prefix) for p in prompts), prompts[0]
