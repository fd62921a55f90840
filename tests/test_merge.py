"""The merge stage: weighted averages and task arithmetic of tiny models, streamed through safetensors."""
import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from rlcomp.models import load_tokenizer, make_tiny_model
from rlcomp.pipeline import Run
from rlcomp.stages import merge

SMALL = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=256)


def state(path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model, read from its safetensors file(s) (sharded or not)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    files = set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())
    return {k: v for file in files for k, v in load_file(path / file).items()}


def merged(tmp_path, model=None, **fields) -> Path:
    run = Run(output_dir=tmp_path / "run", seed=0, logger=None, stage="merge")
    return Path(merge.run(merge.Config(**fields), run, model))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """The tiny model's architecture, initialised from another seed."""
    return str(make_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1, **SMALL))


def test_average(tiny_model, other_model, tmp_path):
    a, b = state(tiny_model), state(other_model)
    half = state(merged(tmp_path / "half", models=[tiny_model, other_model], weights=[0.5, 0.5]))
    assert half.keys() == a.keys()
    for name in a:
        torch.testing.assert_close(half[name], (a[name] + b[name]) / 2)
        assert half[name].dtype == a[name].dtype
    assert not torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])  # two seeds
    only_a = state(merged(tmp_path / "a", models=[tiny_model, other_model], weights=[1, 0]))
    assert all(torch.equal(only_a[name], a[name]) for name in a)
    default = merged(tmp_path / "default", models=[tiny_model, other_model])
    record = json.loads((default.parent / "merge.json").read_text())
    assert record["weights"] == [0.5, 0.5] and record["method"] == "average" and record["base"] is None


def test_task_arithmetic(tiny_model, tmp_path):
    """theta = base + alpha * sum_i w_i (theta_i - base), checked on one tensor set by hand."""
    models = []
    for value in (3.0, 5.0):
        path = tmp_path / f"m{value:g}"
        shutil.copytree(tiny_model, path)
        tensors = load_file(path / "model.safetensors")
        tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], value)
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        models.append(str(path))
    base = state(tiny_model)
    assert torch.equal(base["model.norm.weight"], torch.ones_like(base["model.norm.weight"]))
    out = merged(tmp_path / "ta", models=models, weights=[0.5, 0.25], method="task_arithmetic", base=tiny_model,
                 alpha=2.0)
    result = state(out)
    # 1 + 2 * (0.5 * (3 - 1) + 0.25 * (5 - 1)) = 5; every other tensor has no task vector: the base's
    assert torch.equal(result["model.norm.weight"], torch.full_like(base["model.norm.weight"], 5.0))
    assert all(torch.equal(result[n], base[n]) for n in base if n != "model.norm.weight")
    record = json.loads((out.parent / "merge.json").read_text())
    assert (record["method"], record["weights"], record["alpha"]) == ("task_arithmetic", [0.5, 0.25], 2.0)
    # weights default to 1 each; "input" is the stage's input model
    one = state(merged(tmp_path / "one", model=tiny_model, models=[models[0]], method="task_arithmetic",
                       base="input"))
    assert torch.equal(one["model.norm.weight"], torch.full_like(base["model.norm.weight"], 3.0))


def test_different_architectures_and_tokenizers(tiny_model, chat_model, tmp_path):
    deeper = str(make_tiny_model(tmp_path / "deeper", **{**SMALL, "num_layers": 3}))
    llama = str(make_tiny_model(tmp_path / "llama", architecture="llama", **SMALL))
    for other in (deeper, llama):
        with pytest.raises(ValueError, match="different architectures") as info:
            merged(tmp_path / "out", models=[tiny_model, other])
        message = str(info.value)
        assert "\n" not in message and tiny_model in message and other in message
    with pytest.raises(ValueError, match="different tokenizers") as info:  # same weights, added tokens
        merged(tmp_path / "out", models=[tiny_model, chat_model])
    assert "\n" not in str(info.value) and tiny_model in str(info.value) and chat_model in str(info.value)
    assert not (tmp_path / "out" / "run" / "stages" / "merge" / "model").exists()


def test_output_loads_and_generates(tiny_model, other_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merged(tmp_path, models=[tiny_model, other_model])
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"} <= {
        p.name for p in out.iterdir()}
    assert not (out.parent / "model.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = load_tokenizer(out)
    ids = tokenizer("1+2=", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert generated.shape == (1, ids.shape[1] + 4)


def test_config_errors():
    with pytest.raises(ValidationError) as info:
        merge.Config(models=["a", "b"], weights=[1.0])
    assert info.value.errors()[0]["loc"] == ("weights",) and "weights" in str(info.value)
    with pytest.raises(ValidationError, match="base"):
        merge.Config(models=["a", "b"], method="task_arithmetic")
    with pytest.raises(ValidationError, match="two or more"):
        merge.Config(models=["a"])
    with pytest.raises(ValidationError, match="task_arithmetic only"):
        merge.Config(models=["a", "b"], alpha=0.5)
    assert merge.resources(merge.Config(models=["a", "b"])) == {"CPU": 1}


def test_paths(tiny_model, other_model, tmp_path):
    """"input", a path under the run's output directory, and a missing path in one line naming it."""
    stage_model = tmp_path / "run" / "stages" / "sft" / "model"
    shutil.copytree(other_model, stage_model)
    out = merged(tmp_path, model=tiny_model, models=["input", "stages/sft/model"], weights=[1, 0])
    reference = state(tiny_model)
    assert all(torch.equal(v, reference[k]) for k, v in state(out).items())
    assert json.loads((out.parent / "merge.json").read_text())["paths"] == [tiny_model, str(stage_model)]
    with pytest.raises(ValueError, match="models.1 stages/nope/model: no model directory") as info:
        merged(tmp_path, model=tiny_model, models=["input", "stages/nope/model"])
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no input model"):
        merged(tmp_path, models=["input", tiny_model])


def test_sharded(tiny_model, tmp_path):
    """A model saved in shards (with an index) merges, and the output shards when it exceeds max_shard_mb."""
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(sharded, max_shard_size="100KB")
    load_tokenizer(tiny_model).save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    out = merged(tmp_path, models=[str(sharded), tiny_model], max_shard_mb=0.1)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reference, result = state(tiny_model), state(out)
    assert result.keys() == reference.keys()
    assert all(torch.equal(result[k], reference[k]) for k in reference)  # 0.5 a + 0.5 a == a
    reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert torch.equal(reloaded["model.embed_tokens.weight"], reference["model.embed_tokens.weight"])


def test_no_heavy_imports_at_module_level():
    """Recipe validation imports every stage module: torch and friends are imported inside functions."""
    tree = ast.parse(Path(merge.__file__).read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert not top & {"torch", "ray", "transformers", "safetensors", "vllm"}
