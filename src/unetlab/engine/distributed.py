"""Data-parallel training on torch.distributed, started by torchrun (or one plain process).

`torchrun --nproc-per-node N -m unetlab train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; the
trainer then joins the process group (NCCL on CUDA, gloo on CPU), wraps the model in
DistributedDataParallel, gives each rank its shard of every batch and of the validation set,
reduces losses and metric states across ranks, and lets only rank 0 write files and logs.
Multi-node: the same command on every node with `--nnodes M --node-rank K --rdzv-backend c10d
--rdzv-endpoint HOST:PORT` (torchrun's rendezvous); nothing in unetlab changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process's place in a torchrun launch; a plain process is rank 0 of 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world(world: World, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    if not world.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(world: World, value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (itself when alone)."""
    if not world.active:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def gather_objects(world: World, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list when alone)."""
    if not world.active:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(world: World, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not world.active:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()
