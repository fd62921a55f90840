"""Weight sync: after every learner update, the new policy weights reach every rollout worker.

Two methods behind `WeightSync.push()`:
- `object_store`: learner rank 0 gathers the full state dict to CPU, `ray.put` stores it once and every rollout
  worker reads it. Simple and works anywhere; the default on CPU.
- `broadcast`: learner rank 0 and the rollout workers form their own process group (NCCL on GPU, gloo on CPU)
  and rank 0 broadcasts the weights tensor by tensor, device to device, straight into the engine's loader. The
  default on GPU. The same code runs with gloo on CPU, which is how it is tested.

A process group of its own, outside torch.distributed's default one: the learner ranks already have a default
group among themselves, and the rollout workers (vLLM) must not have theirs changed. NCCL cannot put two ranks
on one GPU, so a rollout worker colocated with learner rank 0 on the same GPU needs `object_store`.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Iterator, Literal

import ray
import torch
import torch.distributed as dist

Method = Literal["auto", "object_store", "broadcast"]
GROUP_TIMEOUT = timedelta(minutes=10)


def weight_group(address: str, port: int, rank: int, world_size: int, device: torch.device) -> dist.Backend:
    """A process group of `world_size` processes rendezvousing at address:port; rank 0 hosts the store."""
    store = dist.TCPStore(address, port, world_size, is_master=rank == 0, timeout=GROUP_TIMEOUT)
    if device.type == "cuda":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    return dist.ProcessGroupGloo(store, rank, world_size, GROUP_TIMEOUT)


def send_weights(group: dist.Backend | None, named_tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Learner side. Every learner rank iterates (gathering each full tensor is an FSDP collective); only rank 0,
    the one holding `group`, broadcasts."""
    for _, tensor in named_tensors:
        if group is not None:
            group.broadcast(tensor.contiguous(), 0).wait()


def receive_weights(group: dist.Backend, specs: list[tuple[str, list[int], torch.dtype]],
                    device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Rollout side: yields (name, tensor) as each arrives, so an engine can load while receiving."""
    for name, shape, dtype in specs:
        tensor = torch.empty(shape, dtype=dtype, device=device)
        group.broadcast(tensor, 0).wait()
        yield name, tensor


class WeightSync:
    """Driver side: `push()` copies the policy group's current weights into every rollout worker."""

    def __init__(self, policy, rollout, method: Method = "auto"):
        self.policy, self.rollout = policy, rollout
        on_gpu = policy.device_type == "cuda"
        self.method = ("broadcast" if on_gpu else "object_store") if method == "auto" else method
        if self.method == "broadcast":
            leader = policy.workers[0]
            address, port = ray.get(leader.master_address.remote())
            size = 1 + len(rollout.workers)
            ray.get([leader.join_weight_group.remote(address, port, size)]
                    + [w.join_weight_group.remote(address, port, i + 1, size) for i, w in enumerate(rollout.workers)])
            self.specs = ray.get(leader.weight_specs.remote())

    def push(self) -> None:
        if self.method == "object_store":
            self.rollout.load_weights(ray.put(self.policy.state_dict()))
            return
        # Senders and receivers block on each other: start them all, then wait for all.
        ray.get([w.broadcast_weights.remote() for w in self.policy.workers]
                + [w.receive_weights.remote(self.specs) for w in self.rollout.workers])
