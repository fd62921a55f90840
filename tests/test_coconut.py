"""Coconut: the curriculum on hand cases, continuous thoughts equal to the previous position's last hidden state
(in training and generation alike), and the stage end to end: a model that thinks, saved, loaded back in
other processes and evaluated to the same answers."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcomp.config import load_recipe, validate_recipe
from rlcomp.latent import add_latent_tokens, fill_latents, positions, read_spec
from rlcomp.models import load_tokenizer
from rlcomp.stages.coconut import Config, curriculum, sequence, split_steps


def test_steps_and_answer_split_at_the_separator_and_marker():
    assert split_steps("s1 2+3=5 w5 c0; s2 1+1=2 w2 c0; ans 25", "ans ", ";") == (
        ["s1 2+3=5 w5 c0;", " s2 1+1=2 w2 c0;"], " ans 25")
    assert split_steps("a\nb\n#### 7", "####", "\n") == (["a\n", "b\n"], "#### 7")
    with pytest.raises(ValueError, match="no answer marker 'ans '"):
        split_steps("no answer", "ans ", ";")


def test_curriculum_replaces_steps_by_thoughts_on_hand_cases():
    cfg = Config(data={"dataset": "addition"}, max_latent_stage=3, thoughts_per_step=2)
    # (stage, steps in the chain) -> (steps replaced, thoughts)
    assert curriculum(0, 4, cfg) == (0, 0)
    assert curriculum(2, 4, cfg) == (2, 4)
    assert curriculum(3, 2, cfg) == (2, 6)  # padded to the stage's thoughts (pad_latent_to_max)
    assert curriculum(4, 5, cfg) == (5, 6)  # past the last latent stage: no text steps, max thoughts
    unpadded = Config(data={"dataset": "addition"}, max_latent_stage=3, thoughts_per_step=2, pad_latent_to_max=False)
    assert curriculum(3, 2, unpadded) == (2, 4) and curriculum(4, 1, unpadded) == (1, 2)
    ids = {"start": 90, "latent": 91, "end": 92}
    seq, skip = sequence([1, 2], [[10, 11], [12], [13]], [20, 0], 2, ids, cfg)
    assert seq == [1, 2, 90, 91, 91, 91, 91, 92, 13, 20, 0] and skip == 8  # loss from the remaining step on


def test_thoughts_are_the_last_hidden_state_of_the_position_before(tiny_model, tmp_path):
    tokenizer = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = add_latent_tokens(model, tokenizer, tokenizer.eos_token_id)
    assert torch.equal(model.get_input_embeddings().weight[ids["latent"]],
                       model.get_input_embeddings().weight[tokenizer.eos_token_id])
    model.eval()
    pad = tokenizer.pad_token_id
    lat, start, end = ids["latent"], ids["start"], ids["end"]
    rows = [[5, 6, 7, start, lat, lat, end, 8], [pad, pad, 9, start, lat, lat, end, 4]]  # left padding, as generation
    input_ids = torch.tensor(rows)
    mask = (input_ids != pad).long()
    with torch.no_grad():
        embeds = fill_latents(model, input_ids, mask, lat, 2)
        last = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask),
                     output_hidden_states=True).hidden_states[-1]
        tokens = model.get_input_embeddings()(input_ids)
    for r in range(2):
        for c in range(8):
            if rows[r][c] == lat:
                assert torch.allclose(embeds[r, c], last[r, c - 1], atol=1e-5), (r, c)
                assert not torch.allclose(embeds[r, c], tokens[r, c])
            else:
                assert torch.equal(embeds[r, c], tokens[r, c])


@pytest.mark.e2e
def test_coconut_recipe_smoke_run_model_thinks_and_loads_back(ray_cluster, tmp_path):
    from rlcomp.pipeline import run_recipe

    recipe = load_recipe("recipes/coconut.yaml", [  # its smoke form, long enough for the whole curriculum
        "stages.coconut.data.cot=terse", "stages.coconut.max_latent_stage=2", "stages.coconut.thoughts_per_step=1",
        "stages.coconut.epochs_per_stage=1", "stages.coconut.epochs=4", "stages.coconut.max_steps=100",
        "stages.coconut.optim.lr=1e-3", "stages.eval_coconut.max_tokens=16"], smoke=True)
    test = recipe.stages[-1].data.model_dump(exclude_defaults=True)
    summary = run_recipe(recipe, tmp_path / "run")
    curriculum = json.loads((tmp_path / "run/stages/coconut/curriculum.json").read_text())
    assert [e["stage"] for e in curriculum["epochs"]] == [0, 1, 2, 3] and curriculum["steps"] == 4 * 8
    model_dir = tmp_path / "run/stages/coconut/model"
    assert read_spec(model_dir)["thoughts"] == 2
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.convert_tokens_to_ids("<|latent|>") == read_spec(model_dir)["latent"]
    first = summary["evals"][0]
    samples = [json.loads(line) for line in (tmp_path / "run/stages/eval_coconut/samples.jsonl").read_text().splitlines()]
    assert all(2 <= s["tokens"] <= 2 + 16 for s in samples)  # the two thoughts count; then at most max_tokens
    # the saved model, loaded afresh by new rollout workers, evaluates to the same answers
    again = run_recipe(validate_recipe({"seed": 0, "model": str(model_dir), "stages": [
        {"name": "eval", "type": "eval", "data": test, "max_tokens": 16}]}), tmp_path / "again")
    assert again["evals"][0]["accuracy"] == first["accuracy"]
    redo = [json.loads(line) for line in (tmp_path / "again/stages/eval/samples.jsonl").read_text().splitlines()]
    assert [s["response"] for s in redo] == [s["response"] for s in samples]
