"""`rlcomp compare`: scores, the report's agreement with compare.json, and a whole comparison at smoke size
(methods side by side on a local cluster, a failing method, --resume)."""
import json
import re

import pytest

from rlcomp.compare import add_scores, load_comparison, run_compare, shared_prefixes, validate_comparison
from rlcomp.compare_report import frontier, markdown
from rlcomp.config import RecipeError


def _row(method, accuracy, tokens, status="ok"):
    greedy = {"accuracy": accuracy, "mean_response_tokens": tokens, "lengths": [tokens]}
    return {"method": method, "status": status, "results": {"mixed_addition": {"greedy": greedy}},
            "train_seconds": 0, "train_tokens": 0, "wall_seconds": 0}


def test_aes_keeps_the_sign_of_an_accuracy_drop():
    result = {"rows": [_row("start", 0.8, 100.0), _row("drop", 0.72, 60.0), _row("gain", 0.88, 60.0)],
              "datasets": ["mixed_addition"], "start_model": "m", "seconds": 1,
              "eval": {"samples": 0, "pass_k": [], "max_tokens": 64},
              "machine": {"processor": "cpu", "torch": "x"}}
    add_scores(result)
    drop, gain = (r["results"]["mixed_addition"] for r in result["rows"][1:])
    # dL = 0.4; dAcc = -0.1 -> 0.4 - 5 * 0.1 = -0.1 (the O1-Pruner v1 table's slip would give +0.7)
    assert drop["aes"] == pytest.approx(-0.1) and drop["tokens_vs_start"] == pytest.approx(0.6)
    assert gain["aes"] == pytest.approx(0.4 + 3 * 0.1)
    assert "| drop | 0.720 | 60.0 | 0.60x | -0.100 |" in markdown(result)


def test_frontier_keeps_only_undominated_points():
    points = [(100, 0.9), (60, 0.95), (50, 0.7), (80, 0.96), (55, 0.7)]
    assert frontier(points) == [(50, 0.7), (60, 0.95), (80, 0.96)]


def test_comparison_errors_name_the_method_and_key():
    base = {"start": {"model": None, "stages": [{"type": "make_model"}]},
            "eval": {"data": {"dataset": "mixed_addition", "split": "test", "n": 4}}}
    with pytest.raises(RecipeError, match=r"methods\.bad: stages\.0\.optim\.lrr: unknown key"):
        validate_comparison({**base, "methods": {"bad": [{"type": "sft", "data": {"dataset": "addition"},
                                                            "optim": {"lrr": 1}}]}})
    with pytest.raises(RecipeError, match="method name 'start'"):
        validate_comparison({**base, "methods": {"start": [{"type": "sft", "data": {"dataset": "addition"}}]}})
    with pytest.raises(RecipeError, match="pass_k"):
        validate_comparison({**base, "eval": {**base["eval"], "pass_k": [4], "samples": 2},
                             "methods": {"a": [{"type": "sft", "data": {"dataset": "addition"}}]}})


def test_rows_share_only_leading_training_stages_with_the_same_settings():
    sft = {"name": "sft", "type": "sft", "data": {"dataset": "addition"}, "max_steps": 3}
    comparison = validate_comparison({
        "start": {"model": None, "stages": [{"type": "make_model"}]},
        "eval": {"data": {"dataset": "mixed_addition", "split": "test", "n": 4}},
        "methods": {"a": [sft], "b": [sft, {"name": "merge", "type": "merge", "models": ["start", "input"]}],
                    "c": [{**sft, "max_steps": 4}], "d": [sft, {**sft, "name": "sft2"}],
                    "e": [sft, {**sft, "name": "sft2"}, {**sft, "name": "sft3"}]}})
    # the longest run of equal stages wins; the comparison's own eval stages are never shared
    assert shared_prefixes(comparison) == {"b": ("a", ["sft"]), "d": ("a", ["sft"]), "e": ("d", ["sft", "sft2"])}


SMALL = """
seed: 0
start:
  stages:
    - {type: make_model, hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128}
    - {name: sft, type: sft, data: {dataset: mixed_addition, n: 64}, batch_size: 8, max_steps: 3}
eval:
  data: {dataset: mixed_addition, split: test, n: 12}
  max_tokens: 24
  samples: 2
  pass_k: [2]
methods:
  terse:
    - {name: sft, type: sft, data: {dataset: mixed_addition, n: 64, cot: terse}, batch_size: 8, max_steps: 3}
  grpo:
    - name: rl
      type: rl
      data: {dataset: mixed_addition, n: 16}
      reward: {verifier: mixed_addition, parts: [{name: accuracy}, {name: kimi}]}
      rollout: {n: 2, max_tokens: 24}
      prompts_per_step: 2
      max_steps: 2
  terse_merge:   # terse's SFT (taken from that row, not rerun), then merged with the start
    - {name: sft, type: sft, data: {dataset: mixed_addition, n: 64, cot: terse}, batch_size: 8, max_steps: 3}
    - {name: merge, type: merge, models: [start, input], weights: [0.5, 0.5]}
  broken:   # fails when its stage runs: 4 examples are fewer than one batch of 8
    - {name: sft, type: sft, data: {dataset: mixed_addition, n: 4}, batch_size: 8, max_steps: 1}
"""


def _md_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells for line in text.splitlines() if line.startswith("| ") and "---" not in line
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


@pytest.mark.e2e
def test_comparison_side_by_side_with_a_failure_and_resume(ray_cluster, tmp_path):
    path = tmp_path / "cmp.yaml"
    path.write_text(SMALL)
    out = tmp_path / "out"
    result = run_compare(load_comparison(path), out)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["start", "terse", "grpo", "terse_merge", "broken"]
    assert rows["broken"]["status"] == "failed" and "fewer than batch_size" in rows["broken"]["error"]
    assert all(rows[m]["status"] == "ok" for m in ("start", "terse", "grpo"))
    # 8 logical CPUs hold the SFT learner and the RL stage at once: they overlapped.
    terse, grpo = rows["terse"], rows["grpo"]
    assert terse["started_at"] < grpo["finished_at"] and grpo["started_at"] < terse["finished_at"]
    assert terse["train_tokens"] > 0 and grpo["train_tokens"] > 0 and rows["start"]["train_tokens"] == 0
    # terse_merge waited for terse and took its SFT stage; its train time and tokens still count that stage
    merged = rows["terse_merge"]
    assert merged["started_at"] >= terse["finished_at"] and merged["shared_stages"] == {"sft": "terse"}
    assert (out / "methods/terse_merge/stages/sft").resolve() == (out / "methods/terse/stages/sft").resolve()
    assert merged["train_tokens"] == terse["train_tokens"] and merged["train_seconds"] >= terse["train_seconds"]
    assert "terse_merge: sft (from terse)" in (out / "compare.md").read_text()

    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for name in ("pareto.png", "length_by_level.png", "lengths_terse.png", "lengths_grpo.png", "report.html"):
        assert (out / name).stat().st_size > 1000, name
    md = (out / "compare.md").read_text()
    table = _md_rows(md)
    header = table["method"]
    for row in saved["rows"]:
        cells = dict(zip(header, table[row["method"]]))
        if row["status"] == "failed":
            assert cells["accuracy"] == f"failed: {row['error']}"
            continue
        res = row["results"]["mixed_addition"]
        assert float(cells["accuracy"]) == round(res["greedy"]["accuracy"], 3)
        assert float(cells["mean tokens"]) == round(res["greedy"]["mean_response_tokens"], 1)
        assert float(cells["pass@2"]) == round(res["sampled"]["pass@2"], 3)
        for level, by in res["greedy"]["by_level"].items():
            acc, tokens = cells[f"level {level} acc / tokens"].split(" / ")
            assert (float(acc), float(tokens)) == (round(by["accuracy"], 3), round(by["mean_response_tokens"], 1))
        assert len(res["greedy"]["lengths"]) == res["greedy"]["n"] == 12
        html = (out / "report.html").read_text()
        assert all(f"<td>{c}</td>" in html for c in table[row["method"]])
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # opens with no network

    markers = {p: p.stat().st_mtime_ns for p in out.glob("**/done.json")}
    again = run_compare(load_comparison(path), out, resume=True)
    assert {p: p.stat().st_mtime_ns for p in out.glob("**/done.json")} == markers  # nothing finished reran
    assert [r["status"] for r in again["rows"]] == ["ok", "ok", "ok", "ok", "failed"]
    assert again["rows"][1]["wall_seconds"] == terse["wall_seconds"]
