"""Learning to skip steps: step counting, the paper's filter and the hand-made shorter solutions on hand cases;
recipes/skip_steps.yaml's smoke form end to end (round 0, then one round of generation, filter and retraining)."""
import json
import random

import pytest

from rlcomp.config import load_recipe
from rlcomp.data import TASKS
from rlcomp.pipeline import run_recipe
from rlcomp.sample import Example
from rlcomp.stages.skip_steps import Config, count_steps, keep, shorter_by


def test_count_steps_in_both_formats():
    assert count_steps("s1 7+5=12 w2 c1; s2 4+8+1=13 w3 c1; ans 632", ";") == 2
    assert count_steps("ans 632", ";") == 0
    assert count_steps("7+5=12\n40+80=120\nThus, the answer is 132.", "\n") == 2
    assert count_steps("s1 a;; s2 b; ans 1", ";") == 2  # an empty part is no step


def test_the_filter_keeps_right_answers_in_exactly_the_asked_fewer_steps():
    assert keep(correct=True, steps=2, asked=2, full=3)
    assert not keep(correct=False, steps=2, asked=2, full=3)  # wrong answer
    assert not keep(correct=True, steps=3, asked=2, full=3)  # did not skip as asked
    assert not keep(correct=True, steps=1, asked=2, full=3)  # skipped more than asked
    assert not keep(correct=True, steps=3, asked=3, full=3)  # no fewer than the full solution


def test_merged_steps_on_hand_examples():
    addition, direction = TASKS["addition"], TASKS["direction"]
    assert addition.chunked("347+285=", [2, 1]) == "s1 47+85=132 w32 c1; s2 3+2+1=6 w6 c0; ans 632"
    assert addition.chunked("347+285=", [3]) == "s1 347+285=632 w632 c0; ans 632"
    assert direction.chunked("N:L,R,A=", [2, 1]) == "s1 LR N>N; s2 A N>S; ans S"
    for task in (addition, direction, TASKS["mixed_addition"]):
        for e in task.generate(20, cot="terse"):
            assert task.chunked(e.prompt, [1] * e.extra["n_steps"]) == e.response  # sizes of 1: the terse form
            short = shorter_by(task, e, random.Random(0), "random")
            assert count_steps(short, ";") == e.extra["n_steps"] - 1 and task.check(short, e.answer)
            first = shorter_by(task, e, random.Random(0))  # the default: the first two steps merged
            assert first == task.chunked(e.prompt, [2] + [1] * (e.extra["n_steps"] - 2))
            last = shorter_by(task, e, random.Random(0), "last")
            assert last == task.chunked(e.prompt, [1] * (e.extra["n_steps"] - 2) + [2])
    for task in (addition, direction):  # two pairs merged: the first two, the last two, two at random places
        for e in task.generate(40, cot="terse", **({"digits": 4} if task is addition else {"steps": 6})):
            n = e.extra["n_steps"]
            assert shorter_by(task, e, random.Random(0), "first", 2) == task.chunked(e.prompt, [2, 2] + [1] * (n - 4))
            assert shorter_by(task, e, random.Random(0), "last", 2) == task.chunked(e.prompt, [1] * (n - 4) + [2, 2])
            short = shorter_by(task, e, random.Random(e.id), "random", 2)
            assert count_steps(short, ";") == n - 2 and task.check(short, e.answer)
            assert shorter_by(task, e, random.Random(0), "random", n // 2 + 1) is None  # too few steps
    places = {tuple(i for i, step in enumerate(shorter_by(addition, e, random.Random(seed), "random", 2).split(";"))
                    if step.split()[2:] and len(step.split()[2]) == 3)  # `w32`: two columns written
              for seed in range(200) for e in addition.generate(1, cot="terse", digits=5)}
    assert places == {(0, 1), (0, 2), (1, 2)}  # which 2 of the 3 steps left do two columns: every way
    with pytest.raises(ValueError, match="cannot split '347\\+285=' into steps of \\[2\\]"):
        addition.chunked("347+285=", [2])


def test_the_cancelling_warm_start_merges_only_steps_that_undo_each_other():
    direction = TASKS["direction"]
    assert direction.cancelling("N:L,R,A,A,L=") == [0, 2]  # L R, then A A; R A and A L turn
    assert direction.cancelling("N:L,L,A,R=") == []
    examples = direction.generate(50, cot="terse")
    has_pair = [bool(direction.cancelling(e.prompt)) for e in examples]
    assert any(has_pair) and not all(has_pair)
    for e in examples:
        short = shorter_by(direction, e, random.Random(0), "cancelling")
        if not direction.cancelling(e.prompt):
            assert short is None
            continue
        assert count_steps(short, ";") == e.extra["n_steps"] - 1 and direction.check(short, e.answer)
        [merged] = [step.split() for step in short.split("; ") if len(step.split()[1]) == 2]  # doing two turns
        before, after = merged[2].split(">")
        assert merged[1] in ("LR", "RL", "AA") and before == after
    six = Example(prompt="N:L,R,L,A,A,R=", answer="N", extra={"n_steps": 6})  # cancelling pairs at 0, 1 and 3
    assert {shorter_by(direction, six, random.Random(seed), "cancelling", 2) for seed in range(20)} == {
        "s1 LR N>N; s2 L N>W; s3 AA W>W; s4 R W>N; ans N", "s1 L N>W; s2 RL W>W; s3 AA W>W; s4 R W>N; ans N"}
    assert shorter_by(direction, six, random.Random(0), "cancelling", 3) is None  # no three that do not overlap
    four = Example(prompt="N:L,R,L,R=", answer="N", extra={"n_steps": 4})  # pairs at 0, 1, 2: only 0 and 2 fit two
    assert {shorter_by(direction, four, random.Random(seed), "cancelling", 2) for seed in range(20)} == {
        "s1 LR N>N; s2 LR N>N; ans N"}
    with pytest.raises(ValueError, match="task 'addition' has no steps that cancel"):
        Config(name="s", data={"dataset": "addition", "cot": "terse"}, warm_start_merge="cancelling")


def test_config_errors_name_the_field():
    data = {"dataset": "addition", "cot": "terse"}
    with pytest.raises(ValueError, match="step_prompt must hold both"):
        Config(name="s", data=data, step_prompt="{question} in few steps")
    with pytest.raises(ValueError, match="skips"):
        Config(name="s", data=data, skips=[0])
    with pytest.raises(ValueError, match="warm_start_skips"):
        Config(name="s", data=data, warm_start_skips=[])


def test_warm_start_needs_a_task_that_writes_shorter_solutions(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4", "response": "2+2=4\nThus, the answer is 4."}))
    data = {"dataset": "qa", "path": str(path)}
    with pytest.raises(ValueError, match="warm_start: .* not 'qa'; set warm_start: false"):
        Config(name="s", data=data)
    Config(name="s", data=data, warm_start=False, step_separator="\n")


@pytest.mark.e2e
def test_skip_steps_recipe_smoke_run(ray_cluster, tmp_path):
    recipe = load_recipe("recipes/skip_steps.yaml", smoke=True)
    run_recipe(recipe, tmp_path)
    stage = tmp_path / "stages" / "skip"
    rounds = [json.loads(line) for line in (stage / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    train = recipe.stages[1].data.n
    # round 0: the full-step data and one hand-made shorter solution per problem of two or more steps
    assert train < rounds[0]["train_examples"] <= 2 * train
    asked = rounds[1]["generated"]
    assert 0 < asked["asked"] <= 2 * train and 0 <= asked["kept"] <= asked["right"] <= asked["asked"]
    assert rounds[1]["train_examples"] == train + asked["kept"]
    assert set(asked["kept_by_skip"]) == {"n_minus_1", "n_minus_2"}
    assert sum(asked["kept_by_skip"].values()) == asked["kept"]
    kept = [json.loads(line) for line in (stage / "round1_kept.jsonl").read_text().splitlines()]
    assert len(kept) == asked["kept"] and all(k["response"] and k["prompt"] for k in kept)
    for r in rounds:
        assert 0 <= r["in_domain"]["accuracy"] <= 1 and r["in_domain"]["n"] == 8 and "out_of_domain" in r
        assert (stage / f"round{r['round']}" / "model" / "config.json").is_file()
        assert (stage / f"round{r['round']}_standard" / "model" / "config.json").is_file()
