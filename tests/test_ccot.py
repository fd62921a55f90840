"""CCoT: k and the gold positions on hand values, the normalised MSE and phi's own states' score on hand
examples, gold states that are the frozen model's, phi trained one layer at a time, contemplation feeding layer-l
states back, the END head's stop and the cap, and the recipe end to end: a model that contemplates, saved, loaded
back in other processes and evaluated to the same answers."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlcomp.config import load_recipe, validate_recipe
from rlcomp.data import get_task
from rlcomp.latent import (CCOT_SPEC_FILE, CONTEMPLATOR, END_HEAD, EndHead, cached, contemplate, latent_kind,
                           layer_inputs, place_contemplation, positions, read_ccot_spec)
from rlcomp.losses import LOSSES
from rlcomp.losses.ccot import gather, gold_batch, normalised_mse, phi_forward
from rlcomp.models import decoder_layers, load_tokenizer
from rlcomp.prompts import PromptRenderer
from rlcomp.stages.ccot import (Config, Row, contemplations, decode_batch, evenly_spaced, first_stop, own_nmse,
                                phi_batch, prepare, train_end_head)


def test_k_and_evenly_spaced_positions_on_hand_values():
    assert contemplations(30, 0.1) == 3  # as a decimal: 0.1 * 30 in floats is 3.0000000000000004
    assert contemplations(31, 0.1) == 4 and contemplations(10, 0.25) == 3 and contemplations(4, 1.0) == 4
    assert contemplations(1, 0.05) == 1
    assert contemplations(200, 0.1) == 20 and contemplations(200, 0.15) == 30  # the cap, ceil(200 r)
    assert evenly_spaced(10, 3) == [2, 5, 9]  # the last token of each third (0-based), the last the chain's end
    assert evenly_spaced(8, 2) == [3, 7] and evenly_spaced(7, 1) == [6] and evenly_spaced(4, 4) == [0, 1, 2, 3]
    # in phi's sequence [prompt; k positions]: inputs from the gold position before each spot, targets at the spots
    row = Row(prompt=[1, 2, 3], chain=list(range(10, 20)), answer=[7, 0], spots=[2, 5, 9])
    other = Row(prompt=[4, 5], chain=[30, 31, 32, 33], answer=[7, 0], spots=[3])
    batch = phi_batch([row, other], layer=2, feedback=1, pad=0)
    assert batch["ccot_at"].tolist() == [[3, 4, 5], [2, 0, 0]]
    assert batch["ccot_src"].tolist() == [[2, 5, 8], [1, 0, 0]]  # the prompt's last token, then spots 1..k-1
    assert batch["ccot_dst"].tolist() == [[5, 8, 12], [5, 0, 0]]
    assert batch["ccot_valid"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["ccot_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["input_ids"].shape == (2, 13) and batch["ccot_layer"] == 2 and batch["feedback_layer"] == 1


def test_normalised_mse_on_a_hand_example():
    target = torch.tensor([[[1.0, 3.0], [0.0, 4.0]], [[-1.0, 1.0], [5.0, 5.0]]])
    pred = torch.tensor([[[2.0, 2.0], [0.0, 0.0]], [[1.0, 1.0], [9.0, 9.0]]])
    valid = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # row 0: var [1, 3] = 1, MSE 1 -> 1; var [0, 4] = 4, MSE (0 + 16) / 2 = 8 -> 2; (1 + 2) / 2 = 1.5
    # row 1: var [-1, 1] = 1, MSE (4 + 0) / 2 = 2 -> 2; its second position is padding
    assert normalised_mse(pred, target, valid).tolist() == [1.5, 2.0]
    loss, _ = LOSSES["ccot_phi"]({"pred": pred, "target": target, "valid": valid}, {"step_sequences": 4})
    assert loss.item() == pytest.approx((1.5 + 2.0) / 4)


def test_phi_own_states_score_zero_on_the_gold_ones_and_one_on_their_mean():
    torch.manual_seed(0)
    gold = [torch.randn(3, 3, 8), torch.randn(5, 3, 8)]  # rows of [n positions, L + 1 hidden states, D]
    assert own_nmse(gold, gold) == [0.0, 0.0]  # layers 1..L (index 0, the input, is left out)
    means = [g.mean(-1, keepdim=True).expand_as(g) for g in gold]
    assert own_nmse(means, gold) == pytest.approx([1.0, 1.0])
    off = [g.clone() for g in gold]
    off[1][:, 2] += 3 * (gold[1][:, 2] - means[1][:, 2])  # row 1, layer 2: off by 3x its deviation from the mean
    assert own_nmse(off, gold) == pytest.approx([0.0, (0 + 9) / 2])  # 9 on row 1, 0 on row 0


def addition_rows(model, n=8, r=0.25):
    tokenizer = load_tokenizer(model)
    examples = get_task("addition").generate(n, split="train", seed=0, cot="terse")
    rows, _ = prepare(examples, tokenizer, PromptRenderer(tokenizer), Config(data={"dataset": "addition"}, r=r), "t")
    return rows, tokenizer.pad_token_id


def test_gold_states_are_the_frozen_models_whatever_phis_adapter_learned(tiny_model):
    from rlcomp.learner import build_model
    from rlcomp.schema import LoraConfig

    rows, pad = addition_rows(tiny_model)
    batch = phi_batch(rows[:3], layer=2, feedback=1, pad=pad)
    phi = build_model(tiny_model, lora=LoraConfig(r=4, alpha=8)).eval()
    with torch.no_grad():
        for name, p in phi.named_parameters():
            if "lora_B" in name:
                p.normal_()  # the adapter has moved: phi is no longer theta
        out = phi_forward(phi, batch)
        theta = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
        mask = batch["attention_mask"]
        gold = theta(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions(mask),
                     output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(out["target"], gather(gold, batch["ccot_dst"]))
    assert not torch.allclose(out["pred"], out["target"])
    with torch.no_grad():  # the states phi's own contemplation is held against (phases.json's phi_own_nmse)
        torch.testing.assert_close(gold_batch(phi, batch)[:, :, 2], gather(gold, batch["ccot_dst"]))


def test_phi_on_its_own_inputs_sees_what_it_makes_contemplating_alone(tiny_model):
    # phi_inputs: own. Fed the states phi makes contemplating on its own, its layer-j states at the contemplation
    # positions are those of the contemplation itself (what inference will feed it), not the teacher-forced ones.
    from rlcomp.learner import build_model
    from rlcomp.schema import LoraConfig

    rows, pad = addition_rows(tiny_model)
    rows = rows[:3]
    phi = build_model(tiny_model, lora=LoraConfig(r=4, alpha=8)).eval()
    with torch.no_grad():
        for name, p in phi.named_parameters():
            if "lora_B" in name:
                p.normal_()
        steps = max(row.k for row in rows)
        batch = phi_batch(rows, layer=2, feedback=1, pad=pad, own_steps=steps)
        own = phi_forward(phi, batch)
        forced = phi_forward(phi, phi_batch(rows, layer=2, feedback=1, pad=pad))
        states, _ = contemplate(phi, batch["ccot_prompt_ids"], batch["ccot_prompt_mask"], 1, steps)
    valid = batch["ccot_valid"].bool()
    assert batch["ccot_own_steps"] == steps and valid.sum() < valid.numel()  # rows of different k
    torch.testing.assert_close(own["pred"][valid], states[:, :, 2][valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(own["target"], forced["target"])  # the same gold targets
    assert not torch.allclose(own["pred"][valid], forced["pred"][valid], atol=1e-3)


@pytest.mark.e2e
def test_phi_trains_one_layer_at_a_time(ray_cluster, tiny_model):
    from rlcomp.config import LearnerConfig, OptimConfig
    from rlcomp.learner import LearnerGroup
    from rlcomp.schema import LoraConfig

    rows, pad = addition_rows(tiny_model)
    learner = LearnerConfig(num_workers=2, mixed_precision="fp32", lora=LoraConfig(r=4, alpha=8))
    group = LearnerGroup(tiny_model, learner, OptimConfig(lr=1e-2), total_steps=2)

    def step(j):  # phase j: decoder layer j - 1, the layer-j states
        group.train_layers([j - 1])
        group.train_step([phi_batch(rows[i::2], j, 1, pad) | {"step_sequences": len(rows)} for i in range(2)],
                         "ccot_phi")
        return group.state_dict()

    try:
        start, second, first = group.state_dict(), step(2), step(1)
    finally:
        group.shutdown()
    changed = lambda a, b: {k.split(".")[2] if k.startswith("model.layers.") else k  # noqa: E731
                            for k in a if not torch.equal(a[k], b[k])}
    assert changed(start, second) == {"1"}  # phase 2 moved layer 1 (0-based) only
    assert changed(second, first) == {"0"}  # phase 1 then moved layer 0 only, layer 1 stayed frozen


def test_contemplation_feeds_back_the_layer_l_state_of_the_position_before(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 4]])  # left padding, as the engine and the stage give prompts
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        states, counts = contemplate(model, ids, mask, layer=1, steps=3)
        prompt_states = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                              output_hidden_states=True).hidden_states
        inputs = torch.cat([prompt_states[0], prompt_states[1][:, -1:], states[:, :2, 1]], 1)
        full_mask = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], 1)
        full = model(inputs_embeds=inputs, attention_mask=full_mask, position_ids=positions(full_mask),
                     output_hidden_states=True).hidden_states
    assert states.shape == (2, 3, len(full), 64) and counts.tolist() == [3, 3]
    # fed the layer-1 state of the position before (the first: the prompt's last token's), one pass over the whole
    # sequence gives back contemplate's states at the contemplation positions, at every layer
    for j in range(len(full)):
        torch.testing.assert_close(full[j][:, 4:7], states[:, :, j], atol=1e-5, rtol=1e-5)
    # placed for the decoder: every row ends at the right edge, a row that contemplated less padded on the left
    embeds, placed, at, valid = place_contemplation(torch.ones(2, 4, 64), mask, torch.tensor([3, 1]), 3)
    assert placed.tolist() == [[1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]]
    assert at.tolist() == [[4, 5, 6], [6, 0, 0]] and valid.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert embeds[0, :4].eq(1).all() and embeds[1, 2:6].eq(1).all() and embeds[1, :2].eq(0).all()


def test_the_decoder_attends_to_the_contemplators_states_at_every_layer(tiny_model):
    # With the contemplator's states put at every decoder layer's input, a decoder with the contemplator's weights
    # reproduces the contemplator's states there; the answer after them then sees what it would in the
    # contemplator's own sequence, and generation's one-token steps are left alone.
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids, mask = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 4]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        states, counts = contemplate(model, ids, mask, layer=1, steps=3)
        embeds, placed, at, valid = place_contemplation(model.get_input_embeddings()(ids), mask, counts, 3)
        plain = model(inputs_embeds=embeds, attention_mask=placed, position_ids=positions(placed),
                      output_hidden_states=True, use_cache=True)
        with layer_inputs(model, at, valid, states[:, :, :-1]):
            out = model(inputs_embeds=embeds, attention_mask=placed, position_ids=positions(placed),
                        output_hidden_states=True, use_cache=True)
            longer = torch.cat([placed, torch.ones(2, 1, dtype=torch.long)], 1)  # one more token: 3
            step = model(input_ids=torch.tensor([[3], [3]]), attention_mask=longer,
                         position_ids=positions(longer)[:, -1:], **cached(out))
            whole = model(inputs_embeds=torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[3], [3]]))], 1),
                          attention_mask=longer, position_ids=positions(longer))
    for j in range(len(out.hidden_states)):
        torch.testing.assert_close(out.hidden_states[j][:, 4:7], states[:, :, j], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain.hidden_states[2][:, 4:7], states[:, :, 2], atol=1e-3)  # without: not so
    # Filled at the first layers only (`upper_layers: psi` fills up to the feedback layer), the layers above compute
    # the states there: with the contemplator's weights, the same ones; with other weights above, others.
    with torch.no_grad(), layer_inputs(model, at, valid, states[:, :, :1]):
        lower = model(inputs_embeds=embeds, attention_mask=placed, position_ids=positions(placed),
                      output_hidden_states=True)
        torch.testing.assert_close(lower.hidden_states[-1][:, 4:7], states[:, :, -1], atol=1e-5, rtol=1e-5)
        decoder_layers(model)[-1].mlp.down_proj.weight.mul_(2)
        changed = model(inputs_embeds=embeds, attention_mask=placed, position_ids=positions(placed),
                        output_hidden_states=True)
    torch.testing.assert_close(changed.hidden_states[1][:, 4:7], states[:, :, 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(changed.hidden_states[-1][:, 4:7], states[:, :, -1], atol=1e-3)
    # a generation step after the cached prompt: as the whole sequence in one pass
    torch.testing.assert_close(step.logits[:, -1], whole.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_the_end_head_stops_each_row_and_the_cap_stops_the_rest(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids, mask = torch.tensor([[5, 6, 7], [8, 9, 4]]), torch.ones(2, 3, dtype=torch.long)

    def says_stop(at: list[int]):  # a fake END head: stop for row b at its at[b]-th position (0: never)
        calls = []

        def stop(finals):
            calls.append(finals)
            return torch.tensor([len(calls) == a for a in at])
        return stop

    with torch.no_grad():
        states, counts = contemplate(model, ids, mask, layer=1, steps=5, stop=says_stop([2, 0]))
        assert counts.tolist() == [2, 5] and states.shape[1] == 5  # row 1 runs to the cap
        states, counts = contemplate(model, ids, mask, layer=1, steps=5, stop=says_stop([3, 1]))
        assert counts.tolist() == [3, 1] and states.shape[1] == 3  # every row stopped: no more passes
    head = EndHead(2)  # linear: stop where h0 - h1 > 0.5
    with torch.no_grad():
        head.net[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        head.net[0].bias.fill_(-0.5)
    assert head(torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, -1.0]])).tolist() == [True, False, True]
    assert first_stop(head(torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]))) == 2
    assert first_stop(head(torch.zeros(3, 2))) == 3  # never says stop: all of them


@pytest.mark.parametrize("hidden", [0, 16])
def test_the_end_head_learns_to_stop_at_k_from_states_past_it(hidden, tmp_path):
    # phi's states run to 2k; from the k-th on one feature is high: a trained head stops every row exactly at k
    gen = torch.Generator().manual_seed(0)
    ks = [2, 3, 4, 1, 3, 5, 2]
    finals = []
    for k in ks:
        f = torch.randn(2 * k, 8, generator=gen)
        f[:, 3] = 5.0
        f[k - 1 :, 3] = 9.0
        finals.append(f)
    head, stats, counts = train_end_head(finals, ks, steps=2000, hidden=hidden)
    assert counts == ks and stats["stops_at_k"] == 1.0 and stats["stops_early"] == 0.0 and stats["accuracy"] == 1.0
    # saved and loaded back: the same stops
    head.save(tmp_path / END_HEAD)
    again = EndHead.load(tmp_path / END_HEAD)
    assert [first_stop(again(f)) for f in finals] == ks and len(again.net) == (3 if hidden else 1)


def test_the_decoder_batch_takes_as_many_positions_as_each_row_contemplated():
    rows = [Row(prompt=[1, 2, 3], chain=[9] * 8, answer=[7, 0], spots=[1, 3, 5, 7]),
            Row(prompt=[4, 5], chain=[9] * 4, answer=[6, 7, 0], spots=[1, 3])]
    states = [torch.ones(1, 2, 4), 2 * torch.ones(3, 2, 4)]  # the END head stopped row 0 early and row 1 late
    batch = decode_batch(rows, states, pad=0)
    assert batch["ccot_at"].tolist() == [[3, 0, 0], [2, 3, 4]]
    assert batch["ccot_valid"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert batch["ccot_states"].shape == (2, 3, 2, 4)
    assert batch["ccot_states"][1].eq(2).all() and batch["ccot_states"][0, 0].eq(1).all()
    assert batch["attention_mask"].tolist() == [[1] * 6 + [0] * 2, [1] * 8]
    # the loss is on the answer, after the contemplation positions
    assert batch["targets"].tolist() == [[-100, -100, -100, 7, 0, -100, -100, -100],
                                         [-100, -100, -100, -100, 6, 7, 0, -100]]


@pytest.mark.e2e
def test_ccot_recipe_smoke_run_model_contemplates_and_loads_back(ray_cluster, tmp_path):
    from rlcomp.pipeline import run_recipe
    from rlcomp.rollout import HFEngine, SamplingParams

    recipe = load_recipe("recipes/ccot.yaml", smoke=True)
    ccot = next(s for s in recipe.stages if s.type == "ccot")
    assert ccot.learner.num_workers == 2 and ccot.answer_marker == "ans " and ccot.layer == 1
    test = recipe.stages[-1].data.model_dump(exclude_defaults=True)
    summary = run_recipe(recipe, tmp_path / "run")
    phases = json.loads((tmp_path / "run/stages/ccot/phases.json").read_text())
    assert [p["layer"] for p in phases["phi"]] == [1, 2] and phases["psi"]["steps"] == ccot.psi_steps
    assert phases["cap"] == 20 and phases["examples"] > 0
    assert len(phases["phi_own_nmse"]) == 2 and all(0 < x < math.inf for x in phases["phi_own_nmse"])
    model_dir = tmp_path / "run/stages/ccot/model"
    assert latent_kind(model_dir) == "ccot" and read_ccot_spec(model_dir) == {"layer": 1, "r": 0.1, "cap": 20}
    assert (model_dir / CONTEMPLATOR / "config.json").is_file() and (model_dir / END_HEAD).is_file()
    assert (model_dir / CCOT_SPEC_FILE).is_file() and not (model_dir / CONTEMPLATOR / "adapter").exists()
    # the engine contemplates between 1 and cap positions per prompt, counted in the length
    examples = get_task("addition").generate(4, split="test", seed=0, cot="terse")
    groups = HFEngine(str(model_dir)).generate(examples, SamplingParams(max_tokens=8))
    assert all(1 <= g[0].latent_positions <= 20 for g in groups)
    first = summary["evals"][-1]
    samples = [json.loads(line) for line in (tmp_path / "run/stages/eval_ccot/samples.jsonl").read_text().splitlines()]
    # the saved model, loaded afresh by new rollout workers, evaluates to the same answers and lengths
    evaluation = {"name": "eval", "type": "eval", "data": test, "max_tokens": recipe.stages[-1].max_tokens}
    again = run_recipe(validate_recipe({"seed": 0, "model": str(model_dir), "stages": [evaluation]}), tmp_path / "again")
    assert again["evals"][0]["accuracy"] == first["accuracy"]
    assert again["evals"][0]["mean_response_tokens"] == first["mean_response_tokens"]
    redo = [json.loads(line) for line in (tmp_path / "again/stages/eval/samples.jsonl").read_text().splitlines()]
    assert [(s["response"], s["tokens"]) for s in redo] == [(s["response"], s["tokens"]) for s in samples]
