"""The recipe `reward` section: validation messages, the in-process Scorer, and O1-Pruner's reference table."""
import pytest
from pydantic import ValidationError

from rlcomp.rewards import ReferenceTable, RewardSpec, Scorer
from rlcomp.sample import Sample


def spec_error(data) -> str:
    with pytest.raises(ValidationError) as info:
        RewardSpec.model_validate(data)
    return str(info.value)


def test_validation_errors_name_the_field():
    assert "parts.0.kimi.warmup_stpes" in spec_error({"parts": [{"name": "kimi", "warmup_stpes": 3}]})
    assert "parts.1.kimi.warmup_steps" in spec_error({"parts": [{"name": "accuracy"},
                                                               {"name": "kimi", "warmup_steps": -1}]})
    assert "parts.0.dapo_overlong.max_length" in spec_error({"parts": [{"name": "dapo_overlong", "cache_length": 4}]})
    assert "parts.0.custom.wieght" in spec_error({"parts": [{"name": "my:fn", "wieght": 1}]})
    assert "verifier\n" in spec_error({"verifier": "mathh"}) and "unknown verifier 'mathh'" in spec_error({"verifier": "mathh"})
    assert "unexpected keyword argument 'boxx'" in spec_error({"verifier": "math", "verifier_options": {"boxx": 1}})
    assert "duplicate" in spec_error({"parts": [{"name": "accuracy"}, {"name": "accuracy"}]})
    assert "need correctness" in spec_error({"verifier": None, "parts": [{"name": "kimi"}]})
    assert "rewward" in spec_error({"rewward": 1})


def test_spec_defaults_and_builtin_parameters():
    spec = RewardSpec.model_validate({"parts": [{"name": "o1_pruner", "lam": 5, "clip": [-2, 4]},
                                                {"name": "l1_max", "target": 512}]})
    assert spec.verifier == "auto" and spec.timeout == 5
    assert spec.parts[0].lam == 5 and spec.parts[0].clip == (-2, 4) and spec.parts[0].length_credit == "all"
    assert spec.parts[1].alpha == 0.01 and spec.parts[1].delta == 0.5
    assert [p.name for p in RewardSpec().parts] == ["accuracy"]


def group(prompt, responses, answer="7", **fields):
    return [Sample(prompt=prompt, response=r, answer=answer, **fields) for r in responses]


def test_scorer_fills_every_part_and_the_weighted_sum_in_order():
    spec = {"verifier": "exact", "parts": [{"name": "accuracy", "weight": 1.0},
                                           {"name": "kimi", "weight": 0.5, "warmup_steps": 2},
                                           {"name": "dapo_overlong", "weight": 1.0, "max_length": 20, "cache_length": 10}]}
    groups = [group("p1", ["7", "wrong answer 1", "thinking a lot then\nA: 7"]), group("p2", ["8", "7"])]
    with Scorer(spec, workers=2) as scorer:
        scorer.score(groups, step=0)  # warm-up: the Kimi penalty is still off
        assert [[s.rewards["kimi"] for s in g] for g in groups] == [[0, 0, 0], [0, 0]]
        scorer.score(groups, step=2)
        assert scorer.counts["ok"] == 10
    acc = [[s.rewards["accuracy"] for s in g] for g in groups]
    assert acc == [[1, 0, 1], [0, 1]]
    # p1 lengths 1, 14, 24 -> Kimi 0.5, 0.5 - 13/23 (< 0, so kept for the wrong one), -0.5;
    # DAPO (free up to 10, -1 at 20): 0, -0.4, -1
    kimi = [s.rewards["kimi"] for s in groups[0]]
    assert kimi == pytest.approx([0.5, 0.5 - 13 / 23, -0.5])
    assert [s.rewards["dapo_overlong"] for s in groups[0]] == pytest.approx([0, -0.4, -1])
    assert [s.reward for s in groups[0]] == pytest.approx([1 + 0.25, 0.5 * (0.5 - 13 / 23) - 0.4, 1 - 0.25 - 1])
    assert [s.reward for s in groups[1]] == pytest.approx([0 + 0.5 * 0.0, 1 + 0.5 * 0.0])  # equal lengths


def test_auto_verifier_follows_each_samples_data_source():
    samples = [Sample("q", "#### 1,000", "#### 1000", data_source="gsm8k"),
               Sample("q", r"\boxed{\frac12}", "0.5", data_source="math500"),
               Sample("q", "s1 7+5=12 w2 c1; ans 632", "632", data_source="addition"),
               Sample("q", r"\boxed{0.5}", r"\frac{1}{2}")]  # no data source: math
    with Scorer({}, workers=1) as scorer:
        scorer.score([samples])
    assert [s.reward for s in samples] == [1.0, 1.0, 1.0, 1.0]


def test_length_targets_and_group_parts():
    spec = {"verifier": "exact", "parts": [{"name": "l1_exact"}, {"name": "shorter_better"},
                                           {"name": "arora_zanette"}, {"name": "l1_max", "target": 3}]}
    samples = group("p", ["7", "abc", "7  "], extra={"target_length": 2})
    samples[2].finished = False
    with Scorer(spec, workers=1) as scorer:
        scorer.score([samples])
    assert [s.rewards["l1_exact"] for s in samples] == pytest.approx([1 - 3e-4, -3e-4, 1 - 3e-4])
    assert [s.rewards["shorter_better"] for s in samples] == pytest.approx([2.0, -0.002, 2 - 0.002])
    assert [s.rewards["arora_zanette"] for s in samples] == pytest.approx([0.95, 0.0, 0.0])  # unfinished = wrong
    assert [s.rewards["l1_max"] for s in samples] == pytest.approx([0.52, 0.0, 0.5])  # 0.01 * (3 - 1) + 0.5
    missing = group("p", ["7"])
    with Scorer({"verifier": "exact", "parts": [{"name": "l1_exact"}]}, workers=1) as scorer:
        with pytest.raises(KeyError, match="target_length"):
            scorer.score([missing])


def test_reference_table_round_trip_and_o1_pruner(tmp_path):
    reference = [group("p1", ["7", "no", "A: 7"]), group("p2", ["x" * 10, "y" * 30])]
    spec = {"verifier": "exact", "parts": [{"name": "o1_pruner", "lam": 2.0}]}
    with Scorer(spec, workers=2) as scorer:
        table = scorer.reference_table(reference)
        path = tmp_path / "ref" / "reference.json"
        table.save(path)
        assert [p.name for p in path.parent.iterdir()] == ["reference.json"]  # no temporary file left behind
        loaded = ReferenceTable.load(path)
        assert loaded.by_prompt == table.by_prompt and len(loaded) == 2
        p1 = loaded.lookup("p1")
        assert (p1.length, p1.accuracy, p1.samples) == (pytest.approx(7 / 3), pytest.approx(2 / 3), 3)
        assert (loaded.lookup("p2").length, loaded.lookup("p2").accuracy) == (20, 0)

        policy = [group("p1", ["7", "nope"]), group("p2", ["7" * 5])]
        with pytest.raises(ValueError, match="reference table"):
            scorer.score(policy)
        scorer.set_reference(loaded)
        scorer.score(policy)
    got = [s.reward for g in policy for s in g]
    assert got == pytest.approx([(7 / 3) / 1 - 1 + 2 * (1 - 2 / 3), (7 / 3) / 4 - 1 + 2 * (0 - 2 / 3),
                                 20 / 5 - 1 + 2 * (0 - 0)])
    # the file named in the spec works too; an unknown prompt is an error that names it
    with Scorer({**spec, "parts": [{"name": "o1_pruner", "reference": str(path)}]}, workers=1) as scorer:
        scorer.score([group("p2", ["7" * 5])])
        with pytest.raises(KeyError, match="'p3'"):
            scorer.score([group("p3", ["7"])])


def test_reference_table_needs_scored_samples():
    with pytest.raises(ValueError, match="sample 0 of group 0 has no rewards"):
        ReferenceTable.from_groups([group("p", ["7"])])
