"""Stage `merge`: one model from the weights of several, as Kimi k1.5's long2short merges a long-CoT and a
short-CoT model by averaging their weights.

- `method: average` (the default): theta = sum_i w_i theta_i; the weights default to 1/n each (they need not
  sum to 1: other sums scale every weight, which is rarely wanted).
- `method: task_arithmetic`: theta = theta_base + alpha * sum_i w_i (theta_i - theta_base); the weights default
  to 1 each, and one model is enough (alpha scales its task vector).

`models` and `base` are model directories: "start" (what the run started from), "input" (the stage's input
model: its `model`, else the previous stage's output), a path under the run's output directory
(`stages/<name>/model`), an absolute or working-directory path, or a hub id (downloaded to the local cache). They must hold safetensors weights (model.safetensors, or shards named by
model.safetensors.index.json), the same architecture (config and every tensor's name and shape) and the same
tokenizer; the output takes its config, generation config and tokenizer files from the first model.

The merge streams: tensors are read one at a time from the memory-mapped safetensors files, combined in float32,
cast back to the first model's dtype and written in bounded shards, so no model is ever loaded whole.

Not mergekit: its pins of transformers, accelerate and pydantic clash with vLLM's. TIES and DARE (sign
election, dropping and rescaling deltas) are not implemented.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rlcomp.schema import StageConfig

INPUT = "input"  # in `models` or `base`: the stage's input model
START = "start"  # the model the run started from (the recipe's `model`, else its first stage's output)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".index.json")
# What decides token ids when a model has no tokenizer.json (BPE, SentencePiece, WordPiece vocabularies).
LEGACY_VOCAB_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "vocab.txt", "added_tokens.json")


class Config(StageConfig):
    type: Literal["merge"] = "merge"
    models: list[str] = Field(min_length=1)
    weights: list[float] | None = None  # one per model; default 1/n (average) or 1 (task_arithmetic)
    method: Literal["average", "task_arithmetic"] = "average"
    base: str | None = None  # task_arithmetic: the model the task vectors are taken from
    alpha: float | None = None  # task_arithmetic: scales the sum of the weighted task vectors (default 1)
    max_shard_mb: float = Field(2000, gt=0)  # output safetensors shards (one file, no index, when it fits)

    @field_validator("weights")
    @classmethod
    def _one_weight_per_model(cls, weights: list[float] | None, info: ValidationInfo):
        models = info.data.get("models")  # absent when `models` itself was invalid
        if weights is not None and models is not None and len(weights) != len(models):
            raise ValueError(f"weights has {len(weights)} values for {len(models)} models (one per model)")
        return weights

    @model_validator(mode="after")
    def _fields_of_the_method(self):
        if self.method == "task_arithmetic" and self.base is None:
            raise ValueError("base: method task_arithmetic needs a base model (the task vectors are taken from it)")
        if self.method == "average":
            if len(self.models) < 2:
                raise ValueError("models: method average needs two or more models")
            # not model_fields_set: a recipe written back out (a comparison's rows are) sets every field
            if self.base is not None or self.alpha is not None:
                raise ValueError("base and alpha are used by method task_arithmetic only")
        return self

    @property
    def task_alpha(self) -> float:
        return 1.0 if self.alpha is None else self.alpha

    def merge_weights(self) -> list[float]:
        default = 1 / len(self.models) if self.method == "average" else 1.0
        return self.weights if self.weights is not None else [default] * len(self.models)


def resources(cfg: Config) -> dict[str, float]:
    """What the stage holds at once (a comparison runs methods side by side while they fit)."""
    return {"CPU": 1}


def resolve(value: str, field: str, run, model: str | None) -> Path:
    """A model directory for `value`: "input", "start", then the run's output directory, then as given, then a
    Hugging Face hub id (its safetensors and config files downloaded to the local cache)."""
    if value in (INPUT, START):
        given = model if value == INPUT else getattr(run, "start_model", None)
        if given is None:
            raise ValueError(f"merge: {field} is {value!r} but the run has no {value} model "
                             "(set `model`, or put a stage before it)")
        value = given
    path = Path(value).expanduser()
    # A run-relative path first: `stages/sft/model` names this run's stage even when the CWD has one too.
    for candidate in ([path] if path.is_absolute() else [Path(run.output_dir) / path, path]):
        if (candidate / "config.json").is_file():
            return candidate
    if not path.is_absolute() and value.count("/") == 1 and not path.exists():
        try:  # a hub id, as every other stage accepts
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(value, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                 "*.jinja"]))
        except Exception as exc:  # offline, unknown or gated: say so in one line
            raise ValueError(f"merge: {field} {value}: not a local model directory, and the hub gave "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    where = "" if path.is_absolute() else f" (looked under {run.output_dir} and the working directory)"
    raise ValueError(f"merge: {field} {value}: no model directory with a config.json{where}")


class Weights:
    """A model's tensors, read one at a time from its safetensors files. safe_open memory-maps a file, so
    nothing is read until a tensor is asked for."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self.config = json.loads((path / "config.json").read_text())
        index, single = path / "model.safetensors.index.json", path / "model.safetensors"
        if index.is_file():
            files = {name: path / file for name, file in json.loads(index.read_text())["weight_map"].items()}
        elif single.is_file():
            with safe_open(single, "pt") as f:
                files = dict.fromkeys(f.keys(), single)
        else:
            raise ValueError(f"merge: {path} has no model.safetensors or model.safetensors.index.json "
                             "(only safetensors weights merge; save_pretrained writes them)")
        self.handles = {file: safe_open(file, "pt") for file in set(files.values())}
        self.file_of = files

    def names(self) -> list[str]:
        return list(self.file_of)

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(self.handles[file].get_slice(name).get_shape()) for name, file in self.file_of.items()}

    def get(self, name: str):
        return self.handles[self.file_of[name]].get_tensor(name)

    def describe(self) -> str:
        c = self.config.get("text_config", self.config)  # multimodal configs nest the language model's
        return f"{self.config.get('model_type')}, hidden {c.get('hidden_size')}, {c.get('num_hidden_layers')} layers"


def check_architectures(models: list[Weights]) -> None:
    first, shapes = models[0], models[0].shapes()
    for other in models[1:]:
        why = None
        if [other.config.get(k) for k in ("architectures", "model_type")] != \
                [first.config.get(k) for k in ("architectures", "model_type")]:
            why = ""  # the descriptions say it
        else:
            theirs = other.shapes()
            if only := sorted(theirs.keys() ^ shapes.keys()):
                why = f": tensor {only[0]} is in one of them only"
            elif name := next((n for n in shapes if shapes[n] != theirs[n]), None):
                why = f": tensor {name} is {shapes[name]} vs {theirs[name]}"
        if why is not None:
            raise ValueError(f"merge: {first.path} ({first.describe()}) and {other.path} ({other.describe()}) "
                             f"have different architectures{why}")


def tokenizer_identity(path: Path) -> dict:
    """What the ids mean: tokenizer.json's vocabulary, merges and added tokens (not its other fields, which
    transformers versions and tokenizer classes write differently: "" or null), else the legacy vocabulary
    files' bytes."""
    if (path / "tokenizer.json").is_file():
        data = json.loads((path / "tokenizer.json").read_text())
        model = data.get("model") or {}
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]  # both forms
        added = sorted((t["id"], t["content"], t.get("special")) for t in data.get("added_tokens") or [])
        return {"tokenizer.json": (model.get("type"), model.get("vocab"), merges, added)}
    return {name: (path / name).read_bytes() for name in LEGACY_VOCAB_FILES if (path / name).is_file()}


def check_tokenizers(paths: list[Path]) -> None:
    first = tokenizer_identity(paths[0])
    for path in paths[1:]:
        if tokenizer_identity(path) != first:
            raise ValueError(f"merge: {paths[0]} and {path} have different tokenizers (the merged model's token "
                             "ids must mean the same in every model)")


class ShardWriter:
    """Writes tensors to safetensors shards of at most `max_bytes` (a larger tensor gets a shard of its own),
    then names them as save_pretrained does, with an index when there is more than one."""

    def __init__(self, directory: Path, max_bytes: float):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict = {}
        self.pending_bytes = self.total_bytes = 0
        self.shards: list[list[str]] = []  # tensor names per written shard

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self.pending, self.directory / f"shard-{len(self.shards)}.tmp", metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.shards:
            self.flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            (self.directory / f"shard-{i}.tmp").rename(self.directory / name)
        if n > 1:
            weight_map = {tensor: names[i] for i, shard in enumerate(self.shards) for tensor in shard}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def merge_tensor(name: str, models: list[Weights], weights: list[float], base: Weights | None, alpha: float):
    first = models[0].get(name)
    if not first.is_floating_point():
        return first  # integer buffers (position ids, quantisation tables) are not weights to average
    acc = None
    reference = base.get(name).float() if base is not None else 0.0
    for model, w in zip(models, weights):
        term = w * ((first if model is models[0] else model.get(name)).float() - reference)
        acc = term if acc is None else acc.add_(term)
    merged = acc if base is None else reference + alpha * acc
    return merged.to(first.dtype)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place (as rlcomp.learner.atomic_replace_dir, without importing
    torch.distributed and ray for it)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def run(cfg: Config, run, model: str | None) -> str:
    from rlcomp.report import console, write_json

    paths = [resolve(value, f"models.{i}", run, model) for i, value in enumerate(cfg.models)]
    base_path = resolve(cfg.base, "base", run, model) if cfg.method == "task_arithmetic" else None
    weights = cfg.merge_weights()
    models = [Weights(path) for path in paths]
    base = Weights(base_path) if base_path is not None else None
    check_architectures(models + ([base] if base else []))
    check_tokenizers(paths + ([base_path] if base_path else []))

    output = run.stage_dir() / "model"
    tmp = output.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted merge
    tmp.mkdir()
    for file in paths[0].iterdir():  # config, generation config, tokenizer, chat template: the first model's
        if file.is_file() and not file.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(file, tmp / file.name)
    writer = ShardWriter(tmp, cfg.max_shard_mb * 2**20)
    names = models[0].names()
    for name in names:
        writer.add(name, merge_tensor(name, models, weights, base, cfg.task_alpha))
    writer.close()
    replace_dir(tmp, output)

    write_json(run.stage_dir() / "merge.json", {
        "method": cfg.method, "models": cfg.models, "paths": [str(p) for p in paths], "weights": weights,
        "base": cfg.base, "base_path": str(base_path) if base_path else None,
        "alpha": cfg.task_alpha if cfg.method == "task_arithmetic" else None,
    })
    how = f"task arithmetic (alpha {cfg.task_alpha})" if base else "average"
    console.print(f"merge: {how} of {len(paths)} models, weights {[round(w, 4) for w in weights]}, "
                  f"{writer.total_bytes / 2**20:.1f} MiB")
    return str(output)
