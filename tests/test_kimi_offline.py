"""Kimi k1.5's offline methods end to end: the `sample` stage's dataset (resumable by chunks), shortest
rejection sampling through `from_stage`/`select`, DPO on Kimi's pairs and a merge, as recipes/kimi_offline.yaml
runs them in its smoke form."""
import json
from pathlib import Path

import pytest

from rlcomp.config import RecipeError, load_recipe, validate_recipe
from rlcomp.data import DataSpec, load_examples
from rlcomp.data.loaders import read_samples


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_selections_of_a_sample_dataset(tmp_path):
    rows = [{"id": "a", "prompt": "1+2=", "response": r, "answer": "3", "tokens": len(r), "correct": ok}
            for r, ok in [("long chain ans 3", True), ("ans 3", True), ("ans 4", False)]]
    rows += [{"id": "b", "prompt": "2+2=", "response": "ans 5", "answer": "4", "tokens": 5, "correct": False}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pick = lambda select: [e.response for e in load_examples(  # noqa: E731
        DataSpec(from_stage="sample", path=str(path), select=select))]
    assert pick("shortest_correct") == ["ans 3"]  # prompt b has no correct sample: left out
    assert pick("all_correct") == ["long chain ans 3", "ans 3"]
    assert pick("random_correct")[0] in ("long chain ans 3", "ans 3") and len(pick("random_correct")) == 1
    assert len(pick("all")) == 4
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a sample stage's row: missing response, answer"):
        read_samples(tmp_path / "bad.jsonl")


def test_from_stage_must_name_an_earlier_stage():
    stages = [{"name": "sft", "type": "sft", "data": {"from_stage": "sample", "select": "shortest_correct"}},
              {"name": "sample", "type": "sample", "data": {"dataset": "addition"}}]
    with pytest.raises(RecipeError, match=r"stages\.0\.data\.from_stage: 'sample' is not an earlier stage"):
        validate_recipe({"stages": stages})
    with pytest.raises(RecipeError, match="select: shortest_correct picks among an earlier stage's samples"):
        validate_recipe({"stages": [{"type": "sft", "data": {"dataset": "addition", "select": "shortest_correct"}}]})


@pytest.mark.e2e
def test_kimi_offline_smoke_run_and_sample_resume(ray_cluster, tmp_path):
    from rlcomp.pipeline import run_recipe

    recipe = load_recipe("recipes/kimi_offline.yaml", smoke=True)
    run_recipe(recipe, tmp_path)
    samples = rows_of(tmp_path / "stages" / "sample" / "samples.jsonl")
    sample_cfg = next(s for s in recipe.stages if s.type == "sample")
    assert len(samples) == sample_cfg.data.n * (sample_cfg.n + 1)  # with the gold response (smoke_overrides)
    assert sum(r["sample"] == -1 for r in samples) == sample_cfg.data.n
    assert {"id", "prompt", "response", "tokens", "correct", "rewards", "level", "sample"} <= set(samples[0])
    assert all(r["tokens"] > 0 and isinstance(r["correct"], bool) for r in samples)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [e["stage"] for e in summary["evals"]] == ["eval_shortest_sft", "eval_dpo", "eval_merge"]
    for stage in ("shortest_sft", "dpo", "merge"):
        assert (tmp_path / "stages" / stage / "model" / "config.json").is_file(), stage
    assert (tmp_path / "stages" / "dpo" / "pairs.jsonl").is_file()

    # An interrupted sample stage keeps its finished chunks: a chunk written earlier is not generated again.
    chunks = sorted((tmp_path / "stages" / "sample" / "chunks").glob("*.jsonl"))
    marker = chunks[0].read_text().replace('"sample": 0', '"sample": 0, "kept": true', 1)
    chunks[0].write_text(marker)
    (tmp_path / "stages" / "sample" / "done.json").unlink()
    for later in ("shortest_sft", "eval_shortest_sft", "dpo", "eval_dpo", "merge", "eval_merge"):
        (tmp_path / "stages" / later / "done.json").unlink(missing_ok=True)
    stage = next(s for s in recipe.stages if s.name == "sample")
    run_recipe(validate_recipe({"model": str(tmp_path / "stages" / "smoke_model" / "model"),
                                "stages": [stage.model_dump(exclude_none=True)]}), tmp_path, resume=True)
    assert '"kept": true' in (tmp_path / "stages" / "sample" / "samples.jsonl").read_text()
