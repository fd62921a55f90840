"""CoT-Valve: a LoRA delta scaled by alpha (export and eval at any alpha), MixChain (a sample stage over LoRA
scales), CoT-Valve++'s per-sample beta in the training forward, and the progressive schedule;
recipes/cot_valve.yaml's smoke form end to end."""
import json

import pytest
import torch

from rlcomp.config import RecipeError, load_recipe, validate_recipe
from rlcomp.sample import Example
from rlcomp.schema import LoraConfig
from rlcomp.stages.cot_valve import length_betas, levels_longest_first
from rlcomp.stages.sft import joined_short_phases


def test_length_betas_on_hand_values():
    # question a: lengths 10, 20, 30 -> 1, 0.5, 0; question b has one solution (m_max = m_min) -> 1
    assert length_betas(["a", "a", "a", "b"], [10, 20, 30, 5]) == [1.0, 0.5, 0.0, 1.0]


def test_progressive_levels_go_longest_first():
    scales = [None, 0.5, 1.0, 0.5, None, 1.0]
    lengths = [20, 60, 40, 80, 30, 50]  # gold 25, scale 0.5: 70, scale 1.0: 45
    examples = [Example(prompt="q", answer="1", extra={"lora_scale": s}) for s in scales]
    assert levels_longest_first(examples, lengths) == [[1, 3], [2, 5], [0, 4]]


def test_a_level_smaller_than_a_batch_trains_with_its_neighbour():
    assert joined_short_phases([[0, 1, 2], [3], [4, 5, 6]], 3) == [[0, 1, 2], [3, 4, 5, 6]]
    assert joined_short_phases([[0, 1, 2], [3]], 3) == [[0, 1, 2, 3]]
    assert joined_short_phases([[0], [1]], 3) == []  # too few in all: the stage says so


def test_per_sample_lora_scale_equals_the_model_merged_at_that_scale(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlcomp.learner import build_model, plain_model
    from rlcomp.losses.cot_valve import lora_scaled_forward

    lora = LoraConfig(r=4, alpha=8)
    torch.manual_seed(0)
    model = build_model(tiny_model, lora=lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # peft starts B at zero: a delta of nothing would make every scale agree
    state = model.state_dict()  # shares storage with the live model, as a single CPU rank's gathered state does
    before = {k: v.clone() for k, v in state.items()}
    ids = torch.randint(3, 60, (1, 12)).repeat(3, 1)
    scales = [0.0, 0.5, 1.5]
    with torch.no_grad():
        logits = lora_scaled_forward(model, {"input_ids": ids, "lora_scale": torch.tensor(scales)})
        plain = model(input_ids=ids).logits.clone()
        for row, scale in enumerate(scales):
            plain_model(state, model.config, lora, lora_scale=scale).save_pretrained(tmp_path / str(scale))
            merged = AutoModelForCausalLM.from_pretrained(tmp_path / str(scale))
            torch.testing.assert_close(logits[row], merged(input_ids=ids[:1]).logits[0], atol=1e-4, rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # merging left the model alone
    assert not torch.allclose(logits[0], logits[2], atol=1e-3)  # the scale does change the output
    assert torch.allclose(model(input_ids=ids).logits, plain)  # the hooks are gone afterwards


def test_cot_valve_config_errors():
    data = {"from_stage": "s", "select": "all_correct"}
    stages = [{"name": "s", "type": "sample", "data": {"dataset": "addition"}}]
    with pytest.raises(RecipeError, match="cot_valve trains a LoRA delta: set learner.lora"):
        validate_recipe({"stages": stages + [{"type": "cot_valve", "data": data, "learner": {"num_workers": 1}}]})
    with pytest.raises(RecipeError, match="beta: length scales each sample's LoRA branch: batching bucket or pad"):
        validate_recipe({"stages": stages + [{"type": "cot_valve", "data": data, "beta": "length", "batching": "pack"}]})
    with pytest.raises(RecipeError, match="need a MixChain dataset"):
        validate_recipe({"stages": [{"type": "cot_valve", "data": {"dataset": "addition"}, "progressive": True}]})


@pytest.mark.e2e
def test_cot_valve_recipe_smoke_run(ray_cluster, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlcomp.learner import export_lora
    from rlcomp.pipeline import run_recipe

    recipe = load_recipe("recipes/cot_valve.yaml", smoke=True)
    run_recipe(recipe, tmp_path)
    valve = tmp_path / "stages" / "valve" / "model"
    adapter = json.loads((valve / "adapter" / "adapter_config.json").read_text())
    start = tmp_path / "stages" / "smoke_model" / "model"
    assert adapter["base_model_name_or_path"] == str(start.resolve())
    # alpha 0 is the start model exactly; alpha 1 the model as saved
    at0 = AutoModelForCausalLM.from_pretrained(export_lora(valve, 0.0, tmp_path / "at0")).state_dict()
    for name, weight in AutoModelForCausalLM.from_pretrained(start).state_dict().items():
        assert torch.equal(at0[name], weight), name
    at1 = AutoModelForCausalLM.from_pretrained(export_lora(valve, 1.0, tmp_path / "at1")).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(valve).state_dict()
    assert all(torch.allclose(at1[k], v, atol=1e-6) for k, v in saved.items())
    assert any(not torch.equal(at0[k], v) for k, v in saved.items())

    # A rollout group of the valve model moved to alpha 0 (weights pushed into its engine, no restart) writes
    # what the start model's writes, and back at None what the saved model's writes.
    from rlcomp.rollout import RolloutGroup, SamplingParams

    prompts = [Example(prompt=f"{a} + {a + 7} =", answer=str(2 * a + 7)) for a in range(8)]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=12)
    texts = lambda group: [g[0].response_ids for g in group.generate(prompts, greedy)]  # noqa: E731
    valve_group, start_group = RolloutGroup(str(valve), "hf"), RolloutGroup(str(start), "hf")
    try:
        as_saved = texts(valve_group)
        valve_group.use_lora_scale(0.0)
        assert texts(valve_group) == texts(start_group)
        valve_group.use_lora_scale(None)
        assert texts(valve_group) == as_saved
    finally:
        valve_group.shutdown()
        start_group.shutdown()

    evals = {e["stage"]: e for e in json.loads((tmp_path / "summary.json").read_text())["evals"]}
    assert [evals[f"eval_alpha{a}"].get("lora_scale") for a in ("0.25", "0.5", "0.75", "1", "1.5")] == [
        0.25, 0.5, 0.75, None, 1.5]
    assert not list((tmp_path / "stages" / "eval_alpha0.5").glob("model_at_*"))  # the merged copy is removed
    rows = [json.loads(line) for line in (tmp_path / "stages" / "mixchain" / "samples.jsonl").open()]
    prompts = {r["id"] for r in rows}
    assert sorted(r["lora_scale"] for r in rows if r["lora_scale"] is not None) == [0.5] * len(prompts) + [1.5] * len(prompts)
    assert sum(r["sample"] == -1 for r in rows) == len(prompts)  # the gold solution, once per question
    for stage in ("valve_plus_plus", "valve_progressive"):
        assert (tmp_path / "stages" / stage / "model" / "adapter").is_dir(), stage
    assert {"eval_plus_plus", "eval_progressive"} <= set(evals)
