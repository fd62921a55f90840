"""LearnerGroup: N Ray actors forming one torch.distributed group, the model sharded with FSDP2.

The group knows nothing about algorithms: `train_step` takes micro-batches of tensors and the name of a
registered loss (rlcomp/losses). SFT, DPO, distillation and the RL policy losses all run through it.

The model a group trains is a spec: a causal LM or a value head (`head`), optionally with a LoRA adapter
(`learner.lora`, via peft), exported as a plain Hugging Face directory (LoRA merged at a chosen scale, the
adapter itself kept beside it in `adapter/`).
"""
from __future__ import annotations

import importlib.util
import math
import os
import shutil
import socket
from pathlib import Path

import ray
import torch
import torch.distributed as dist
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard  # FSDP2

from rlcomp.cluster import PlacementError, fmt_resources, kill, name_actor, release, reserve
from rlcomp.latent import SPEC_FILE
from rlcomp.models import decoder_layers
from rlcomp.schema import LearnerConfig, LoraConfig, OptimConfig

Batch = dict[str, torch.Tensor]
PLACEMENT_TIMEOUT_S = float(os.environ.get("RLCOMP_PLACEMENT_TIMEOUT_S", 120))


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place, so readers never see a half-written one."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def build_model(path: str, head: str = "causal_lm", lora: LoraConfig | None = None, attn: str = "sdpa"):
    """The model a learner trains, in fp32 master weights: a causal LM, or (`head="value"`) the same body with
    a scalar head per token (PPO's critic); with `lora`, a peft model whose base weights are frozen."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    if head == "value":
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=1, dtype=torch.float32,
                                                                attn_implementation=attn)
    elif head == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    else:
        raise ValueError(f"model head {head!r}: expected causal_lm or value")
    if lora is not None:
        from peft import LoraConfig as PeftLora, get_peft_model

        model = get_peft_model(model, PeftLora(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.targets,
                                               lora_dropout=lora.dropout))
    return model


def plain_model(state: dict[str, torch.Tensor], config, lora: LoraConfig | None, lora_scale: float = 1.0,
                adapter_dir: Path | None = None, base: str | None = None):
    """A full state dict as the learner holds it -> a plain causal LM: a LoRA model's adapter merged at
    `lora_scale` (theta + scale * delta: CoT-Valve's alpha), and saved to `adapter_dir` first if given, naming
    `base` (the model it was trained on) so that `export_lora` can merge it at another scale later."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if lora is None:
        model.load_state_dict(state, assign=True)
        model.tie_weights()  # assign=True unties a tied lm_head: saved twice, merges would see another model
        return model
    from peft import LoraConfig as PeftLora, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = get_peft_model(model, PeftLora(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.targets))
    model.load_state_dict(state, assign=True)
    if adapter_dir is not None:
        model.peft_config["default"].base_model_name_or_path = base
        model.save_pretrained(adapter_dir)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(lora_scale)
            # On one CPU rank the gathered state shares storage with the live model, and merging writes W + delta
            # into the base weight (in place even with peft's safe_merge since 0.22): merge into a copy.
            weight = module.get_base_layer().weight
            weight.data = weight.data.clone()
    plain = model.merge_and_unload()
    plain.tie_weights()
    return plain


def lora_model(model_dir: str | Path, scale: float):
    """A LoRA-trained model directory (its adapter/ names the base model) -> the plain model (fp32) at
    theta + scale * delta (CoT-Valve: 0 the base, 1 as trained, > 1 extrapolated)."""
    import json

    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    adapter = Path(model_dir) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ValueError(f"{model_dir} has no LoRA adapter (adapter/adapter_config.json): a LoRA scale needs a "
                         "model trained with learner.lora")
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json names no base model (base_model_name_or_path)")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(scale)
    return model.merge_and_unload()


def export_lora(model_dir: str | Path, scale: float, out: str | Path) -> Path:
    """`lora_model(model_dir, scale)` as a Hugging Face directory, with the model's tokenizer, written atomically."""
    from transformers import AutoTokenizer

    final = Path(out)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lora_model(model_dir, scale).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
    if (Path(model_dir) / "generation_config.json").is_file():
        shutil.copy(Path(model_dir) / "generation_config.json", tmp / "generation_config.json")
    atomic_replace_dir(tmp, final)
    return final


class LearnerWorker:
    """One rank: holds its FSDP2 shard of the model and its optimizer state. A plain class made a Ray actor
    where it is started (`ray.remote(LearnerWorker)`), so Ray pickles its methods by reference."""

    def __init__(self, rank: int, world_size: int, learner: LearnerConfig):
        self.rank, self.world_size, self.cfg = rank, world_size, learner
        self.device = torch.device("cuda" if learner.gpus_per_worker > 0 else "cpu")
        torch.set_num_threads(max(1, int(learner.cpus_per_worker)))
        torch.set_flush_denormal(True)  # denormal floats make CPU math many times slower as weights decay

    def master_address(self) -> tuple[str, int]:
        with socket.socket() as s:  # a free port on this (rank 0's) node
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, address: str, port: int, model_path: str, optim: OptimConfig | None, total_steps: int, seed: int,
              head: str = "causal_lm"):
        from rlcomp.device import resolve_precision

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=self.rank,
                                world_size=self.world_size)
        torch.manual_seed(seed)
        # flash-attention where installed (GPU): its variable-length kernels make packed batches pay off.
        attn = "flash_attention_2" if self.device.type == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
        model = build_model(model_path, head, self.cfg.lora, attn).to(self.device)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.precision = resolve_precision(self.cfg.mixed_precision, self.device.type)
        if self.world_size > 1 or os.environ.get("RLCOMP_FSDP_ALWAYS"):  # one rank has nothing to shard
            for layer in decoder_layers(model):  # one FSDP unit per decoder layer, then the rest at the root
                fully_shard(layer)
            fully_shard(model)
        self.model, self.config, self.optim = model, model.config, optim
        if optim is None:  # a frozen model (the reference policy): forward passes only
            model.requires_grad_(False)
            return self.precision
        trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapter only
        self.optimizer = torch.optim.AdamW(trainable, lr=optim.lr, betas=optim.betas,
                                           weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, optim, total_steps))
        return self.precision

    def _autocast(self):
        enabled = self.precision["used"] == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _forward(self, batch: Batch) -> torch.Tensor:
        inputs = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        with self._autocast():
            return self.model(**inputs, use_cache=False).logits.float()

    def _outputs(self, loss, batch: Batch):
        """What the loss reads: the logits, or what its own forward returns (hidden states, several passes)."""
        if loss.forward is None:
            return self._forward(batch)
        with self._autocast():
            return loss.forward(self.model, batch)

    def train_step(self, micro_batches: list[Batch], loss_fn, loss_kwargs: dict) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches with `loss_fn` (a registered Loss, sent by the
        driver: a loss registered in the driver's process works here too). Losses are normalised by global
        counts that the driver puts in each batch, so the sum over ranks and micro-batches is the step's loss."""
        self.model.train()
        totals: dict[str, float] = {}
        counts: dict[str, float] = {}
        for batch in micro_batches:
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss, metrics = loss_fn(self._outputs(loss_fn, batch), batch, **loss_kwargs)
            (loss * self.world_size).backward()  # FSDP averages gradients over ranks; we want their sum
            for k, v in {"loss": loss.item(), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
        if self.optim.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
            totals["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm) / self.world_size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals["lr"] = self.scheduler.get_last_lr()[0] / self.world_size
        self.scheduler.step()
        names = list(totals)
        summed = torch.tensor([totals[k] for k in names] + [counts.get(k, 0) for k in names], dtype=torch.float64)
        dist.all_reduce(summed)  # gloo has no AVG: sum values and counts, then divide where a metric is a mean
        values, n = summed[: len(names)].tolist(), summed[len(names):].tolist()
        return {k: v / n[i] if loss_fn.reduce.get(k) == "mean" else v for i, (k, v) in enumerate(zip(names, values))}

    def reset_optimizer(self) -> None:
        """Adam's moments and step counts cleared: a fresh optimizer at the schedule's current rate (ICoT-SI
        when it removes another token, Coconut per stage)."""
        self.optimizer.state.clear()

    def train_layers(self, layers: list[int] | None) -> None:
        """From now on only the trainable parameters (LoRA: the adapter's) inside these decoder layers get
        gradients, the rest stay as they are (AdamW skips parameters without a gradient); None: all of them again."""
        if not hasattr(self, "trainable"):
            self.trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        blocks = decoder_layers(self.model)
        if layers is not None and not all(0 <= i < len(blocks) for i in layers):
            raise ValueError(f"train_layers {layers}: the model has decoder layers 0..{len(blocks) - 1}")
        chosen = None if layers is None else {id(p) for i in layers for p in blocks[i].parameters()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in self.trainable and (chosen is None or id(p) in chosen))

    @torch.no_grad()
    def apply(self, micro_batches: list[Batch], fn) -> list:
        """fn(model, batch) on each micro-batch, in eval mode without gradients; tensors in its result (a tensor,
        or a tuple of them) come back on the CPU."""
        self.model.eval()
        results = []
        for batch in micro_batches:
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with self._autocast():
                out = fn(self.model, batch)
            results.append(tuple(t.cpu() for t in out) if isinstance(out, tuple) else out.cpu())
        return results

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        self.model.eval()
        return self._forward(batch).cpu()

    @torch.no_grad()
    def token_outputs(self, micro_batches: list[Batch], temperature: float = 1.0) -> list[torch.Tensor]:
        """Per target position: log-prob of the target (policy) or the value estimate (critic), [B, T] each."""
        from rlcomp.losses import token_logprobs

        self.model.eval()
        outputs = []
        for batch in micro_batches:
            logits = self._forward(batch)
            if logits.shape[-1] == 1:
                outputs.append(logits[..., 0].cpu())
            else:
                outputs.append(token_logprobs(logits / temperature, batch["targets"].to(self.device)).cpu())
        return outputs

    def save_checkpoint(self, path: str) -> None:
        """Sharded model + optimizer state (torch.distributed.checkpoint: every rank writes its own shard)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state, "scheduler": self.scheduler.state_dict(),
                 "rng": torch.get_rng_state()}
        dcp.save(state, checkpoint_id=path)

    def load_checkpoint(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state, "scheduler": self.scheduler.state_dict(),
                 "rng": torch.get_rng_state()}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])

    def join_weight_group(self, address: str, port: int, size: int) -> None:
        """Rank 0 joins the rollout workers' weight-broadcast group (rlcomp/weight_sync.py) as its root."""
        from rlcomp.weight_sync import weight_group

        self.weight_group = weight_group(address, port, 0, size, self.device)

    def weight_specs(self) -> list[tuple[str, list[int], torch.dtype]]:
        return [(name, list(t.shape), t.dtype) for name, t in self.model.state_dict().items()]  # global shapes

    @torch.no_grad()
    def broadcast_weights(self) -> None:
        """Every rank gathers each full tensor in turn (an FSDP collective); rank 0 broadcasts it."""
        from torch.distributed.tensor import DTensor

        from rlcomp.weight_sync import send_weights

        if self.cfg.lora is not None:
            raise ValueError("weight_sync: broadcast sends the learner's own tensors; with LoRA use object_store")
        full = ((name, t.full_tensor() if isinstance(t, DTensor) else t) for name, t in self.model.state_dict().items())
        send_weights(getattr(self, "weight_group", None), full)

    def gathered_state(self) -> dict[str, torch.Tensor] | None:
        """The unsharded weights as the learner names them (a collective: every rank calls it); rank 0 gets them."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        return state if self.rank == 0 else None

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The plain model's weights, for rollout engines (a LoRA adapter merged in); rank 0 returns them."""
        state = self.gathered_state()
        if state is not None and self.cfg.lora is not None:
            state = plain_model(state, self.config, self.cfg.lora).state_dict()
        return state

    def save_model(self, path: str, tokenizer_source: str, lora_scale: float = 1.0) -> None:
        from transformers import AutoTokenizer

        state = self.gathered_state()
        if self.rank != 0:
            return
        final = Path(path)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        base = str(Path(tokenizer_source).resolve()) if Path(tokenizer_source).is_dir() else tokenizer_source
        plain_model(state, self.config, self.cfg.lora, lora_scale, tmp / "adapter", base).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(tmp)
        for name in ("generation_config.json", SPEC_FILE):  # a latent model's thoughts travel with it
            if (Path(tokenizer_source) / name).is_file():
                shutil.copy(Path(tokenizer_source) / name, tmp / name)
        atomic_replace_dir(tmp, final)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class LearnerGroup:
    """Driver-side handle: places the ranks, splits each step's micro-batches among them, gathers results."""

    def __init__(self, model_path: str, learner: LearnerConfig, optim: OptimConfig | None, total_steps: int = 1,
                 seed: int = 0, head: str = "causal_lm", name: str = "learner"):
        """`optim=None` makes a frozen group (a reference model); `head="value"` a value model. `name` says
        what the group is in messages (learner, critic, reference)."""
        n, self.name = learner.num_workers, name
        bundle = {"CPU": learner.cpus_per_worker, **({"GPU": learner.gpus_per_worker} if learner.gpus_per_worker else {})}
        self.reservation = reserve(f"{name} group ({n} x {fmt_resources(bundle)})", [bundle] * n)
        self.placement_group = placement_group([bundle] * n, strategy="PACK")
        try:  # only resources in use by others can make this wait (reserve() rejects what can never fit)
            ray.get(self.placement_group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.placement_group)
            release(self.reservation)
            raise PlacementError(f"{name} group: {n} x {fmt_resources(bundle)} could not be placed within {PLACEMENT_TIMEOUT_S:g}s: "
                                 f"the cluster has {fmt_resources(ray.available_resources())} free; other jobs hold the rest") from None
        self.model_path = str(model_path)
        self.device_type = "cuda" if learner.gpus_per_worker else "cpu"
        self.workers = [
            ray.remote(LearnerWorker).options(
                num_cpus=learner.cpus_per_worker,
                num_gpus=learner.gpus_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, i),
            ).remote(i, n, learner)
            for i in range(n)
        ]
        for i, worker in enumerate(self.workers):
            name_actor(worker, f"{name} rank {i}")
        address, port = ray.get(self.workers[0].master_address.remote())
        self.precision = ray.get([w.setup.remote(address, port, self.model_path, optim, total_steps, seed, head)
                                  for w in self.workers])[0]  # what rank 0's device chose (all ranks alike)

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def _shares(self, micro_batches: list[Batch]) -> list[list[Batch]]:
        # FSDP forward/backward are collectives: every rank must run the same number of micro-batches.
        if not micro_batches or len(micro_batches) % self.world_size:
            raise ValueError(f"{len(micro_batches)} micro-batches: need a positive multiple of the "
                             f"{self.world_size} learner ranks")
        return [micro_batches[i :: self.world_size] for i in range(self.world_size)]

    def train_step(self, micro_batches: list[Batch], loss: str, **loss_kwargs) -> dict[str, float]:
        """Deal micro-batches round-robin to the ranks and take one optimizer step. Every micro-batch is checked
        against what the loss requires before any rank runs a forward pass."""
        from rlcomp.losses import LOSSES

        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; registered: {', '.join(sorted(LOSSES))}")
        for i, batch in enumerate(micro_batches):
            LOSSES[loss].check(batch, f"micro-batch {i}")
        shares = self._shares(micro_batches)
        return ray.get([w.train_step.remote(s, LOSSES[loss], loss_kwargs) for w, s in zip(self.workers, shares)])[0]

    def token_outputs(self, micro_batches: list[Batch], temperature: float = 1.0) -> list[torch.Tensor]:
        """Target log-probs (or values, for a critic) of every micro-batch, in input order."""
        return self._dealt("token_outputs", micro_batches, temperature)

    def _dealt(self, method: str, micro_batches: list[Batch], *args) -> list:
        """Each rank's share of the micro-batches through its `method`; the results in input order."""
        shares = self._shares(micro_batches)
        results = ray.get([getattr(w, method).remote(s, *args) for w, s in zip(self.workers, shares)])
        ordered: list = [None] * len(micro_batches)
        for rank, outputs in enumerate(results):
            ordered[rank :: self.world_size] = outputs
        return ordered

    def save_checkpoint(self, path: str | Path) -> None:
        ray.get([w.save_checkpoint.remote(str(path)) for w in self.workers])

    def load_checkpoint(self, path: str | Path) -> None:
        ray.get([w.load_checkpoint.remote(str(path)) for w in self.workers])

    def logits(self, batch: Batch) -> torch.Tensor:
        return ray.get([w.logits.remote(batch) for w in self.workers])[0]

    def reset_optimizer(self) -> None:
        ray.get([w.reset_optimizer.remote() for w in self.workers])

    def train_layers(self, layers: list[int] | None) -> None:
        """Only these decoder layers train from now on (None: every trainable parameter again): CCoT's phi."""
        ray.get([w.train_layers.remote(layers) for w in self.workers])

    def apply(self, fn, micro_batches: list[Batch]) -> list:
        """fn(model, batch) without gradients on every micro-batch, dealt to the ranks as train_step deals them;
        the results in input order. `fn` is module-level (sent by reference) and, on several ranks, must run the
        same number of forward passes on every micro-batch (FSDP gathers weights inside each)."""
        return self._dealt("apply", micro_batches, fn)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return ray.get([w.full_state_dict.remote() for w in self.workers])[0]

    def save_model(self, path: str | Path, lora_scale: float = 1.0) -> Path:
        """The model as a Hugging Face directory (a LoRA adapter merged at `lora_scale`, and kept in adapter/)."""
        ray.get([w.save_model.remote(str(path), self.model_path, lora_scale) for w in self.workers])
        return Path(path)

    def shutdown(self) -> None:
        ray.get([w.shutdown.remote() for w in self.workers])
        kill(self.workers)
        remove_placement_group(self.placement_group)
        release(self.reservation)
