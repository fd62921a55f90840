"""Synthetic tasks, file loaders and DataSpec validation (fast, CPU only, fixtures under tests/fixtures)."""
import re
import statistics
import string
from pathlib import Path

import pytest
from pydantic import ValidationError

from rlcomp.data import TASKS, DataSpec, get_task, load_examples

FIXTURES = Path(__file__).parent / "fixtures"
ALLOWED_CHARS = set(string.printable) - set("\t\r\x0b\x0c")


def _alter(answer: str) -> str:
    """A different answer of the same kind: a number off by one, or another direction."""
    if answer.isdigit():
        return str(int(answer) + 1)
    return {"N": "E", "E": "S", "S": "W", "W": "N"}[answer]


def _is_terse_path(response: str) -> bool:
    """No restatement before the first step, no re-check after the steps, no aside between them."""
    return response.split()[0] in ("s1", "p1") and not any(w in response for w in ("chk", "so ", "wait"))


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("cot", ["verbose", "terse", "none"])
def test_checker_accepts_gold_and_rejects_altered(name, cot):
    task = get_task(name)
    for e in task.generate(200, "train", seed=1, cot=cot):
        assert set(e.prompt + e.response) <= ALLOWED_CHARS
        assert e.response.endswith(f"ans {e.answer}")
        assert task.check(e.response, e.answer)
        assert not task.check(e.response, _alter(e.answer))
        assert not task.check(e.response.rsplit("ans", 1)[0] + "ans " + _alter(e.answer), e.answer)
    if cot == "none":
        assert all(e.response == f"ans {e.answer}" for e in task.generate(20, "train", 0, cot))


def test_extract_answer_takes_last_and_handles_missing():
    task = get_task("addition")
    assert task.extract_answer("ans 12 s1 ... ans 632") == "632"
    assert task.extract_answer("s1 7+5=12 w2 c1;") is None
    assert not task.check("no answer here", "632")
    assert task.check("s1 x; ans 632 \n", " 632 ")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_gold_answers_are_correct(name):
    for e in get_task(name).generate(100, "test", 0, "terse"):
        q = e.prompt.rstrip("=")
        if name in ("addition", "mixed_addition"):
            a, b = q.split("+")
            assert int(e.answer) == int(a) + int(b)
        elif name == "multiplication":
            a, b = q.split("*")
            assert int(e.answer) == int(a) * int(b)
        else:  # replay the turns on a compass
            face, actions = q.split(":")
            for act in actions.split(","):
                face = "NESW"[("NESW".index(face) + {"L": 3, "R": 1, "A": 2}[act]) % 4]
            assert e.answer == face


def test_addition_steps_follow_the_recipe():
    """Columns from the right, carry-in shown only when nonzero, the final carry becomes the leading digit."""
    step = re.compile(r"s(\d) (\d)\+(\d)(\+1)?=(\d+) w(\d) c([01]);")
    for e in get_task("addition").generate(300, "train", 0, "terse"):
        a, b = e.prompt.rstrip("=").split("+")
        steps = step.findall(e.response)
        assert len(steps) == 3 and e.extra["n_steps"] == 3
        carry, written = 0, ""
        for i, (num, da, db, carry_in, total, w, c) in enumerate(steps):
            assert (int(num), da, db) == (i + 1, a[-1 - i], b[-1 - i])
            assert bool(carry_in) == bool(carry)
            assert int(total) == int(da) + int(db) + carry and (int(w), int(c)) == divmod(int(total), 10)[::-1]
            carry, written = int(c), w + written
        assert e.answer == ("1" if carry else "") + written


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_and_test_are_disjoint_and_deduplicated(name):
    task = get_task(name)
    train = {e.prompt for e in task.generate(1000, "train", 0, "none")}
    test = {e.prompt for e in task.generate(200, "test", 0, "none")}
    assert len(train) == 1000 and len(test) == 200
    assert not train & test
    # A different seed draws different problems but still respects the split.
    assert not {e.prompt for e in task.generate(200, "test", 7, "none")} & train


def test_small_problem_space_repeats_instead_of_hanging():
    # direction with 2 actions has only 4 * 9 = 36 problems, so ~32 train problems.
    examples = get_task("direction").generate(100, "train", 0, "terse", steps=2)
    assert len(examples) == 100
    assert 20 < len({e.prompt for e in examples}) < 40


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generation_is_deterministic_by_seed(name):
    task = get_task(name)
    a = [(e.prompt, e.response) for e in task.generate(50, "train", 3, "verbose")]
    b = [(e.prompt, e.response) for e in task.generate(50, "train", 3, "verbose")]
    c = [(e.prompt, e.response) for e in task.generate(50, "train", 4, "verbose")]
    assert a == b and a != c


@pytest.mark.parametrize("name", sorted(TASKS))
def test_verbose_lengths_spread_with_rare_terse_path(name):
    task = get_task(name)
    verbose = [e.response for e in task.generate(2000, "train", 0, "verbose")]
    terse = [len(e.response) for e in task.generate(2000, "train", 0, "terse")]
    lengths = [len(r) for r in verbose]
    assert max(lengths) - min(lengths) > 40
    assert statistics.mean(lengths) > 1.4 * statistics.mean(terse)
    terse_share = sum(map(_is_terse_path, verbose)) / len(verbose)
    assert 0.03 < terse_share < 0.10  # designed at 0.4 * 0.15 = 6% (mixed_addition: 0.4^digits, 8.5%)
    if name != "mixed_addition":  # its asides are checked below
        # The most likely structure is the longest one: 3 re-checks is the modal count.
        counts = [r.count("chk ") + r.count("so ") for r in verbose]
        assert statistics.mode(counts) == 3


def test_mixed_addition_levels_and_interleaved_asides():
    task = get_task("mixed_addition")
    verbose = task.generate(3000, "train", 0, "verbose")
    levels = [e.extra["level"] for e in verbose]
    assert {2, 3, 4} == set(levels) and min(map(levels.count, (2, 3, 4))) > 900  # drawn evenly, recorded
    for e in verbose:
        a, b = e.prompt.rstrip("=").split("+")
        assert len(a) == len(b) == e.extra["level"] == e.extra["n_steps"]
        parts = e.response.split("; ")
        steps = [p for p in parts if p.startswith("s")]
        assert [p.split()[0] for p in steps] == [f"s{i + 1}" for i in range(len(a))]  # needed steps, in order
        for before, part in zip(parts, parts[1:]):  # an aside repeats the step just done (or hesitates)
            if part.startswith("wait") and "hmm" not in part:
                assert before.split()[1] in part or before.startswith("wait")
    between = sum(bool(re.search(r"wait [^;]*; s\d", e.response)) for e in verbose) / len(verbose)
    assert between > 0.5  # most chains have an aside followed by a needed step
    # Greedy structure: after a step one aside is the likeliest continuation (0.6), then a step (0.7).
    asides_per_step = [e.response.count("wait") / e.extra["n_steps"] for e in verbose]
    assert 0.75 < statistics.mean(asides_per_step) < 0.95  # 0.6 * (1 + 0.3 + 0.09 + ...) = 0.86
    assert {"hmm;", "redo", "ok;"} <= {w for e in verbose for w in e.response.split()}
    assert get_task("mixed_addition").generate(50, "test", 0, "none", levels=[4])[0].extra["level"] == 4


def test_addition_lengths_match_the_prototype():
    verbose = [len(e.response) for e in get_task("addition").generate(2000, "train", 0, "verbose")]
    terse = [len(e.response) for e in get_task("addition").generate(2000, "train", 0, "terse")]
    assert 50 <= min(verbose) and max(verbose) <= 150
    assert 53 <= statistics.mean(terse) <= 63


def test_task_options_and_errors():
    four = get_task("addition").generate(5, "train", 0, "none", digits=4)
    assert all(len(p) == 4 for e in four for p in e.prompt.rstrip("=").split("+"))
    assert all(e.prompt.count(",") == 2 for e in get_task("direction").generate(5, "train", 0, "none", steps=3))
    mixed = get_task("addition").generate(200, "train", 0, "terse", digits=[1, 3])  # each operand's own length
    lengths = [tuple(len(p) for p in e.prompt.rstrip("=").split("+")) for e in mixed]
    assert {a for a, _ in lengths} == {1, 2, 3} and any(a != b for a, b in lengths)
    assert all(e.extra["n_steps"] == max(ab) and get_task("addition").check(e.response, e.answer)
               for e, ab in zip(mixed, lengths))
    assert "*" in get_task("multiplication").generate(1, "train", 0, "none", digits=3)[0].prompt
    for bad in ([3, 1], [0, 2], "3", [1, 2, 3]):
        with pytest.raises(ValueError, match=r"option digits: a count of at least 1 or \[fewest, most\]"):
            get_task("addition").generate(5, "train", 0, "none", digits=bad)
    with pytest.raises(ValueError, match="option steps"):
        get_task("direction").generate(5, "train", 0, "none", steps=[5, 2])
    with pytest.raises(ValueError, match="digitz"):
        get_task("addition").generate(5, "train", 0, "none", digitz=4)
    with pytest.raises(ValueError, match="split"):
        get_task("addition").generate(5, "validation", 0, "none")
    with pytest.raises(KeyError, match="subtraction"):
        get_task("subtraction")


def test_load_examples_synthetic():
    spec = DataSpec(dataset="addition", n=10, split="test", seed=2, cot="terse", prompt_template="Q: {question}")
    examples = load_examples(spec)
    assert len(examples) == 10 and all(e.prompt.startswith("Q: ") and e.prompt.endswith("=") for e in examples)
    assert all(e.data_source == "addition" for e in examples)
    assert spec.default_verifier() == "addition"
    assert len(load_examples(DataSpec(dataset="direction", cot="none"))) == 1000  # default n
    three = load_examples(DataSpec(dataset="multiplication", n=3, options={"digits": 3}))
    assert all(len(e.prompt) == len("123*456=") for e in three)


def test_gsm8k_loader():
    spec = DataSpec(dataset="gsm8k", path=str(FIXTURES / "gsm8k.jsonl"))
    examples = load_examples(spec)
    assert [e.answer for e in examples] == ["18", "3", "70000"]
    first = examples[0]
    assert first.prompt.startswith("Janet") and "####" in first.prompt
    assert first.response.endswith("#### 18") and "<<" not in first.response
    assert first.data_source == "gsm8k" and spec.default_verifier() == "gsm8k"
    assert len(load_examples(DataSpec(dataset="gsm8k", path=str(FIXTURES / "gsm8k.jsonl"), n=2))) == 2


def test_math_loaders():
    math = load_examples(DataSpec(dataset="math500", path=str(FIXTURES / "math500.jsonl")))
    assert len(math) == 3 and math[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math[0].prompt.endswith("within \\boxed{}.") and math[0].response
    assert math[0].id == "test/precalculus/807.json" and math[0].extra["level"] == 2
    aime = load_examples(DataSpec(dataset="aime", path=str(FIXTURES / "aime.jsonl")))
    assert [e.answer for e in aime] == ["204", "25", "70"]  # "025" loses its padding
    assert aime[0].response and aime[2].response == ""  # aime25's solution is just the answer
    amc = load_examples(DataSpec(dataset="amc", path=str(FIXTURES / "amc.jsonl")))
    assert [e.answer for e in amc] == ["27", "36", "45"]
    assert DataSpec(dataset="amc", path=str(FIXTURES / "amc.jsonl")).default_verifier() == "math"
    assert DataSpec(dataset="aime24", path=str(FIXTURES / "aime.jsonl"), verifier="exact").default_verifier() == "exact"


def test_directory_path_picks_split_file(tmp_path):
    (tmp_path / "test.jsonl").write_text((FIXTURES / "amc.jsonl").read_text())
    assert len(load_examples(DataSpec(dataset="amc", path=str(tmp_path), split="test"))) == 3
    with pytest.raises(ValueError, match="train.jsonl"):
        load_examples(DataSpec(dataset="amc", path=str(tmp_path)))


def test_generic_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = dict(question_key="query", answer_key="target", response_key="explanation")
    rows = load_examples(DataSpec(dataset="mine", path=str(FIXTURES / "generic.jsonl"), **keys))
    assert [e.answer for e in rows] == ["5", "100", "B"]
    assert rows[0].prompt.startswith("What is 2+3?") and rows[0].response == "2+3=5."
    # every column by its own name, as TRL passes them to reward functions
    assert rows[0].extra == {"id": "q1", "level": 1, "query": "What is 2+3?", "target": 5,
                             "explanation": "2+3=5."} and rows[0].id == "q1"
    table = pa.Table.from_pylist([{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}])
    pq.write_table(table, tmp_path / "d.parquet")
    spec = DataSpec(dataset="mine", path=str(tmp_path / "d.parquet"), prompt_template="{question} ")
    assert [(e.prompt, e.answer, e.response) for e in load_examples(spec)] == [("1+1? ", "2", ""), ("2+2? ", "4", "")]


def test_bad_rows_name_file_line_and_key(tmp_path):
    bad = FIXTURES / "gsm8k_bad.jsonl"
    with pytest.raises(ValueError, match=r"gsm8k_bad\.jsonl:3: missing key 'answer'"):
        load_examples(DataSpec(dataset="gsm8k", path=str(bad)))
    with pytest.raises(ValueError, match=r"generic\.jsonl:1: missing key 'nope'"):
        load_examples(DataSpec(dataset="mine", path=str(FIXTURES / "generic.jsonl"), question_key="nope"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        load_examples(DataSpec(dataset="gsm8k", path=str(broken)))
    no_hashes = tmp_path / "g.jsonl"
    no_hashes.write_text('{"question": "a", "answer": "just 1"}\n')
    with pytest.raises(ValueError, match=r"g\.jsonl:1: .*####"):
        load_examples(DataSpec(dataset="gsm8k", path=str(no_hashes)))


def test_dataspec_validation():
    with pytest.raises(ValidationError, match="datset"):
        DataSpec(dataset="addition", datset="x")
    with pytest.raises(ValidationError, match="no/such/file.jsonl"):
        DataSpec(dataset="gsm8k", path="no/such/file.jsonl")
    with pytest.raises(ValidationError, match="needs a local `path`"):
        DataSpec(dataset="math500")
    with pytest.raises(ValidationError, match="cot"):
        DataSpec(dataset="addition", cot="short")
    with pytest.raises(ValidationError, match="prompt_template"):
        DataSpec(dataset="math500", path=str(FIXTURES / "math500.jsonl"), prompt_template="{question} \\boxed{}")
    assert DataSpec(dataset="some/hub-name").path is None  # hub names validate; loading happens only when used


def test_every_task_has_a_verifier():
    from rlcomp.rewards.verifiers import VERIFIERS

    assert set(TASKS) <= set(VERIFIERS)
