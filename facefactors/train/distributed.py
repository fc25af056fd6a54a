"""Data parallelism under torchrun: process group set-up and gradient averaging.

A method's step updates several optimiser groups in sequence (critic, classifiers,
autoencoder), which the DistributedDataParallel wrapper's one-forward-one-backward
hooks do not model. We do what DDP does, explicitly: identical initial weights
(broadcast from rank 0), each process takes its slice of the global batch, and
gradients are averaged with one bucketed all-reduce per optimiser step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every process start from rank 0's parameters and buffers."""
    if not info.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce and average the gradients of ``params`` in one flat bucket."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(info.world_size)
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def gather_rng_states(info: DistInfo) -> list[torch.Tensor]:
    """Every process's CPU RNG state, in rank order (for exact resume)."""
    state = torch.get_rng_state()
    if not info.enabled:
        return [state]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, state)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        # every rank reaches this point before any tears gloo down: a rank destroying the group
        # while another still has collectives in flight can abort it at exit ("terminate called
        # without an active exception", seen once in CI)
        dist.barrier()
        dist.destroy_process_group()
