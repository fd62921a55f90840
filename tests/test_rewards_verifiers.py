"""Answer extraction and the verifiers, run through the real process pool and real math-verify."""
import json
from pathlib import Path

import pytest

from rlcomp.rewards import verify
from rlcomp.rewards.verifiers import (VERIFIERS, answer_after_phrase, boxed, extract_answer, gsm8k_verifier,
                                      math_verifier, to_number)

FIXTURES = Path(__file__).parent / "fixtures" / "rewards"


def rows(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]


def test_boxed_matches_braces_and_picks_last_or_first():
    text = r"first \boxed{\frac{1}{2}} then \boxed{x^{2} + \{1\}} end"
    assert boxed(text) == r"x^{2} + \{1\}"
    assert boxed(text, "first") == r"\frac{1}{2}"
    assert boxed(r"\fbox{7}") == "7"
    assert boxed(r"\boxed{3} and an unclosed \boxed{4") == "3"
    assert boxed("no box here") is None
    deep = r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}"
    assert boxed(deep) == "{" * 5000 + "1" + "}" * 5000
    assert boxed(r"\boxed{a + \boxed{b}}") == "b"  # of nested boxes, the one starting last


def test_answer_phrases_and_last_number():
    assert answer_after_phrase("so... The answer is: $42$.") == "42"
    assert answer_after_phrase("Work.\nFinal answer: 7 apples\nthanks") == "7 apples"
    assert answer_after_phrase("Q: what?\nA: 12") == "12"
    assert extract_answer("I get 3, then 1,250 and stop") == "1250"
    assert extract_answer("nothing numeric") is None
    assert extract_answer("nothing numeric", number_fallback=False) is None
    assert to_number("$1,000.50 dollars") == pytest.approx(1000.5) and to_number("5%") == 5


@pytest.mark.parametrize("response, gold, expected", [
    (r"So \boxed{\frac{1}{2}}.", "0.5", 1.0),
    (r"\boxed{\dfrac12}", r"\frac{1}{2}", 1.0),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
    (r"\boxed{2\sqrt{5}}", r"\sqrt{20}", 1.0),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", 1.0),
    ("The answer is 3.", "3", 1.0),
    ("It is 17 in the end", "17", 1.0),  # last-number fallback
    (r"\boxed{4}", "3", 0.0),
    (r"\boxed{.5}", "5", 0.0),  # a leading period is no punctuation to strip
    ("", "3", 0.0),
])
def test_math_verifier(response, gold, expected):
    assert math_verifier(response, gold) == expected


def test_math_verifier_options():
    response = r"\boxed{1} no wait \boxed{2}"
    assert math_verifier(response, "2") == 1.0 and math_verifier(response, "1", box="first") == 1.0
    assert math_verifier("It is 17 in the end", "17", number_fallback=False) == 0.0


@pytest.mark.parametrize("response, gold, expected", [
    ("so 3 * 6 = 18\n#### 18", "Janet ... #### 18", 1.0),
    ("#### 1,000", "#### 1000", 1.0),
    ("The answer is $18.00.", "#### 18", 1.0),
    ("She makes 18 dollars", "18", 1.0),
    (r"\boxed{-3}", "#### -3", 1.0),
    ("#### 17", "#### 18", 0.0),
    ("no idea", "#### 18", 0.0),
])
def test_gsm8k_verifier(response, gold, expected):
    assert gsm8k_verifier(response, gold) == expected


def test_exact_numeric_and_synthetic_tasks():
    assert VERIFIERS["exact"]("The answer is Paris.", "Paris") == 1.0
    assert VERIFIERS["exact"]("paris", "Paris") == 0.0 and VERIFIERS["exact"]("paris", "Paris", ignore_case=True)
    assert VERIFIERS["numeric"](r"\boxed{3.1415927}", "3.14159265") == 1.0
    assert VERIFIERS["numeric"](r"\boxed{3.1416}", "3.14159265") == 0.0
    assert VERIFIERS["numeric"](r"\boxed{3.1416}", "3.14159265", rel_tol=1e-3) == 1.0
    assert VERIFIERS["addition"]("s1 7+5=12 w2 c1; ans 632", "632") == 1.0
    assert VERIFIERS["addition"]("s1 7+5=12 w2 c1; ans 633", "632") == 0.0


def test_verify_real_answers_through_the_pool_in_order():
    gsm = rows("gsm8k_answers.jsonl")
    math = rows("math_solutions.jsonl")
    assert verify("gsm8k", [r["answer"] for r in gsm], [r["answer"] for r in gsm], timeout=10, workers=2) == [1.0] * 12
    # each solution against its own answer, then against the next problem's answer (all distinct)
    responses = [r["solution"] for r in math] * 2
    golds = [r["answer"] for r in math] + [r["answer"] for r in math[1:] + math[:1]]
    scores = verify("math", responses, golds, timeout=10, workers=2)
    assert scores == [1.0] * 12 + [0.0] * 12
    assert (scores.timeouts, scores.errors, scores.crashes) == (0, 0, 0)


def test_verify_rejects_unknown_verifier_and_mismatched_lengths():
    with pytest.raises(KeyError, match="unknown verifier 'nope'"):
        verify("nope", ["1"], ["1"])
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        verify("math", ["1", "2"], ["1"])
