"""The seams new methods plug into: algorithms as objects, the loss contract, the learner's model spec, and a
recipe schema that loads no torch, ray or vllm."""
import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import torch

from rlcomp.algorithms import ALGORITHMS, Algorithm, register_algorithm
from rlcomp.config import RecipeError, validate_recipe
from rlcomp.losses import LOSSES, register_loss, token_logprobs

ROOT = Path(__file__).parent.parent


def test_the_rl_stage_never_tests_an_algorithm_name():
    source = (ROOT / "rlcomp" / "stages" / "rl.py").read_text()
    names = "|".join(map(re.escape, ALGORITHMS))
    assert not re.search(rf"""(==|!=|\bin)\s*[\(\[{{]?\s*["']({names})["']""", source)
    assert not re.search(r"algorithm\s*(==|!=|\bin\b)", source)


def test_recipe_validation_imports_no_torch_ray_or_vllm():
    code = ("import sys; from rlcomp.compare import load_any\n"
            "for name in ('quickstart', 'compare', 'ppo', 'o1_pruner', 'grpo'):\n"
            "    load_any(f'recipes/{name}.yaml', smoke=True)\n"
            "print(sorted(m for m in ('torch', 'ray', 'vllm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def module_imports(path: Path, package: str) -> set[str]:
    """rlcomp modules a file imports at its top level (not inside functions: those run later)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlcomp"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rlcomp"))
    return found


def test_no_import_cycles_in_rlcomp():
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "rlcomp").rglob("*.py")}
    graph = {m: {i for i in module_imports(p, m) if i in files and i != m} for m, p in files.items()}
    for module in graph:  # a package's __init__ importing its own submodules (registration) is not a cycle
        graph[module] = {i for i in graph[module] if not i.startswith(module + ".")}

    def cycle_from(start, node, path):
        for nxt in graph[node]:
            if nxt == start:
                return path + [nxt]
            if nxt not in path and (found := cycle_from(start, nxt, path + [nxt])):
                return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, m, [m]))]
    assert not cycles, cycles[0]


def test_every_group_advantage_is_reachable_from_a_recipe():
    from rlcomp.advantages import GROUP_ESTIMATORS

    for name in GROUP_ESTIMATORS:
        stage = {"type": "rl", "data": {"dataset": "addition"}, "algorithm": {"type": "grpo", "advantage": name}}
        assert validate_recipe({"stages": [stage]}).stages[0].algorithm.advantage == name
    with pytest.raises(RecipeError, match=r"stages\.0\.algorithm\.advantage: unknown group advantage 'vtrace'"):
        validate_recipe({"stages": [{"type": "rl", "data": {"dataset": "addition"},
                                     "algorithm": {"type": "grpo", "advantage": "vtrace"}}]})
    with pytest.raises(RecipeError, match=r"stages\.0\.algorithm: unknown algorithm 'a2c'"):
        validate_recipe({"stages": [{"type": "rl", "data": {"dataset": "addition"}, "algorithm": "a2c"}]})


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="loss 'sft' is registered twice"):
        register_loss("sft")(lambda logits, batch: None)
    class Again(Algorithm):
        loss: ClassVar[str] = "grpo"
        type: Literal["grpo"] = "grpo"

    with pytest.raises(ValueError, match="algorithm 'grpo' is registered twice"):
        register_algorithm(Again)


def test_a_loss_names_the_batch_field_it_misses():
    with pytest.raises(ValueError, match="loss 'o1_pruner' needs batch field 'ref_logprobs', which micro-batch 3 lacks"):
        LOSSES["o1_pruner"].check({"targets": 0, "advantages": 0, "step_sequences": 1, "max_response_length": 1,
                                   "step_target_tokens": 1}, "micro-batch 3")


# A new algorithm and a new loss, written here: nothing in rlcomp changes but these registrations.
@register_loss("toy_reinforce", requires=("targets", "advantages"), normaliser="sequences",
               reduce={"toy_mean_advantage": "mean"})
def toy_reinforce(logits, batch, temperature=1.0):
    """Plain REINFORCE, summed over each response's tokens, averaged over the step's responses. (The RL stage
    gives every policy loss the rollout temperature, besides the algorithm's loss_kwargs.)"""
    logp = token_logprobs(logits / temperature, batch["targets"])
    loss = -(logp * batch["advantages"]).sum() / batch["step_sequences"]
    mask = batch["targets"] != -100
    return loss, {"toy_mean_advantage": float(batch["advantages"][mask].mean())}


@register_algorithm
class ToyReinforce(Algorithm):
    """Reward minus the batch's mean reward, as a baseline."""

    loss: ClassVar[str] = "toy_reinforce"
    type: Literal["toy_reinforce"] = "toy_reinforce"

    def loss_kwargs(self) -> dict:
        return {}

    def signals(self, groups, token_rewards, fields):
        totals = [sum(r) for r in token_rewards]
        mean = sum(totals) / len(totals)
        return {"advantages": [t - mean for t in totals]}


@pytest.mark.e2e
def test_a_new_algorithm_and_loss_run_in_the_rl_stage(ray_cluster, tiny_model, tmp_path):
    import json

    import ray.cloudpickle

    from rlcomp.pipeline import run_recipe

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the learner actors cannot import tests/
    stage = {"name": "toy", "type": "rl", "algorithm": "toy_reinforce", "data": {"dataset": "addition", "n": 16},
             "reward": {"verifier": "auto", "parts": [{"name": "accuracy"}]},
             "rollout": {"engine": "hf", "n": 4, "temperature": 1.0, "max_tokens": 16},
             "prompts_per_step": 4, "max_steps": 2, "optim": {"lr": 1e-3}, "learner": {"num_workers": 2}}
    run_recipe(validate_recipe({"model": tiny_model, "stages": [stage]}), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "stages" / "toy" / "steps.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("toy_mean_advantage" in r and "loss" in r for r in rows)


def test_value_clip_fraction_counts_only_binding_clips():
    values_old = torch.tensor([[0.1, 0.7, 0.3]], dtype=torch.float32)
    values = values_old + torch.tensor([[0.05, -0.1, 0.5]])  # only the last moves further than 0.2
    returns = torch.tensor([[1.0, -1.0, 1.0]])  # the last one would move toward its return: the clip binds
    batch = {"targets": torch.zeros(1, 3, dtype=torch.long), "values_old": values_old, "returns": returns,
             "step_target_tokens": 3}
    _, m = LOSSES["value"](values.unsqueeze(-1), batch, value_clip=0.2)
    assert m["vf_clip_fraction"] == pytest.approx(1 / 3)


def test_dual_clip_caps_the_loss_of_a_negative_advantage():
    # ratio 0.9 / 0.1 = 9 on a token with A = -1: the PPO clip keeps max(9, 1.2) = 9; dual clip c = 3 caps it at 3.
    logits = torch.log(torch.tensor([[[0.9, 0.1]]]))
    batch = {"targets": torch.zeros(1, 1, dtype=torch.long), "old_logprobs": torch.log(torch.tensor([[0.1]])),
             "advantages": torch.tensor([[-1.0]]), "step_target_tokens": 1, "step_sequences": 1}
    assert LOSSES["ppo"](logits, batch)[0].item() == pytest.approx(9.0, rel=1e-5)
    loss, m = LOSSES["ppo"](logits, batch, dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0) and m["clip_fraction"] == 1.0


def test_kl_clamp_bounds_the_per_token_kl():
    # p = 0.999 against a reference of 1e-6: k1 = log(0.999 / 1e-6) = 13.8, clamped to 10.
    logits = torch.log(torch.tensor([[[0.999, 0.001]]]))
    batch = {"targets": torch.zeros(1, 1, dtype=torch.long), "advantages": torch.zeros(1, 1),
             "ref_logprobs": torch.log(torch.tensor([[1e-6]])), "step_target_tokens": 1, "step_sequences": 1}
    assert LOSSES["ppo"](logits, batch, kl_estimator="k1")[1]["kl"] == pytest.approx(13.8145, rel=1e-4)
    assert LOSSES["ppo"](logits, batch, kl_estimator="k1", kl_clamp=10.0)[1]["kl"] == pytest.approx(10.0)


def test_l1_max_forms():
    from rlcomp.rewards.length import l1_max

    # target 100, length 140, alpha 0.01: paper clip(-0.4 + 0.5, 0, 1) = 0.1; code (clip(-0.4, -1, 1) + 1) / 2 = 0.3
    assert l1_max(140, True, 100) == pytest.approx(0.1)
    assert l1_max(140, True, 100, form="code") == pytest.approx(0.3)
    assert l1_max(140, False, 100, form="code") == 0.0


def test_o1_pruner_dataset_normalisation_z_scores_over_the_reference_samples():
    from rlcomp.rewards import Scorer
    from rlcomp.rewards.reference import Reference, ReferenceTable
    from rlcomp.sample import Sample

    # one prompt, reference samples of 10 and 30 tokens, one right: L_ref 20, A_ref 0.5.
    # R (lam 2) of the samples: 20/10 - 1 + 2 (1 - 0.5) = 2 and 20/30 - 1 + 2 (0 - 0.5) = -4/3: mean 1/3, sd 2.357
    table = ReferenceTable({"p": Reference(20.0, 0.5, 2, [10, 30], [1.0, 0.0])})
    spec = {"verifier": "exact", "parts": [{"name": "o1_pruner", "lam": 2.0, "normalize": "dataset"}]}
    scorer = Scorer(spec, table)
    sample = Sample(prompt="p", response="1234567890", answer="1234567890")  # right, 10 characters
    [[scored]] = scorer.score([[sample]])
    sd = ((2 - 1 / 3) ** 2 + (-4 / 3 - 1 / 3) ** 2) ** 0.5
    assert scored.rewards["o1_pruner"] == pytest.approx((2 - 1 / 3) / sd)


@pytest.mark.e2e
def test_a_lora_learner_trains_the_adapter_only_and_exports_at_any_scale(ray_cluster, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlcomp.batching import collate_padded, micro_batches, tokenize_examples
    from rlcomp.config import LearnerConfig, OptimConfig
    from rlcomp.data import get_task
    from rlcomp.learner import LearnerGroup
    from rlcomp.models import load_tokenizer
    from rlcomp.schema import LoraConfig

    tokenizer = load_tokenizer(tiny_model)
    seqs = tokenize_examples(tokenizer, get_task("addition").generate(16, split="train", seed=0, cot="terse"), 128)
    learner = LearnerConfig(num_workers=2, mixed_precision="fp32", lora=LoraConfig(r=4, alpha=8))
    group = LearnerGroup(tiny_model, learner, OptimConfig(lr=1e-2), total_steps=3)
    probe = collate_padded(seqs[:4], tokenizer.pad_token_id)
    try:
        for _ in range(3):
            group.train_step(micro_batches(seqs, 2, "pad", tokenizer.pad_token_id), "sft")
        trained = group.logits(probe)
        group.save_model(tmp_path / "at1")
        group.save_model(tmp_path / "at0", lora_scale=0.0)
    finally:
        group.shutdown()
    mask = probe["attention_mask"].bool()

    def logits(path):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            return model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits[mask]

    assert torch.equal(logits(tmp_path / "at0"), logits(tiny_model))  # alpha 0: exactly the start model
    torch.testing.assert_close(logits(tmp_path / "at1"), trained[mask], rtol=1e-4, atol=1e-4)  # alpha 1: trained
    assert not torch.allclose(logits(tmp_path / "at1"), logits(tiny_model))
    assert (tmp_path / "at1" / "adapter" / "adapter_config.json").is_file()


def last_hidden(model, batch):
    """A loss that owns its forward: the last layer's hidden states instead of the logits."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                use_cache=False)
    return out.hidden_states[-1]


@register_loss("toy_hidden_norm", requires=("input_ids", "attention_mask"), normaliser="sequences",
               reduce={"hidden_width": "mean"}, forward=last_hidden)
def toy_hidden_norm(hidden, batch):
    mask = batch["attention_mask"].unsqueeze(-1)
    loss = (hidden.float().square() * mask).sum() / mask.sum() / batch["step_sequences"]
    return loss, {"hidden_width": float(hidden.shape[-1])}


@pytest.mark.e2e
def test_a_loss_may_own_the_forward_and_a_missing_field_is_named_first(ray_cluster, tiny_model):
    import ray.cloudpickle

    from rlcomp.batching import collate_padded, tokenize_examples
    from rlcomp.config import LearnerConfig, OptimConfig
    from rlcomp.data import get_task
    from rlcomp.learner import LearnerGroup
    from rlcomp.models import load_tokenizer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tokenizer = load_tokenizer(tiny_model)
    seqs = tokenize_examples(tokenizer, get_task("addition").generate(8, split="train", seed=0, cot="terse"), 128)
    batches = [collate_padded(seqs[i::2], tokenizer.pad_token_id) | {"step_sequences": 8} for i in range(2)]
    group = LearnerGroup(tiny_model, LearnerConfig(num_workers=2, mixed_precision="fp32"), OptimConfig(lr=1e-3))
    try:
        with pytest.raises(ValueError, match="loss 'toy_hidden_norm' needs batch field 'step_sequences', "
                                             "which micro-batch 1 lacks"):
            group.train_step([batches[0], {k: v for k, v in batches[1].items() if k != "step_sequences"}],
                             "toy_hidden_norm")
        first = group.train_step(batches, "toy_hidden_norm")
        second = group.train_step(batches, "toy_hidden_norm")
    finally:
        group.shutdown()
    assert first["hidden_width"] == 64  # a mean over ranks and micro-batches, not their sum (4 x 64)
    assert second["loss"] < first["loss"]
