"""torch.distributed set-up for runs launched by ``torchrun``, and the few collectives the engine uses.

One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; without them the run is a single process and no process group is created.
The backend is NCCL when training on CUDA and gloo otherwise.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext", "init_distributed", "resolve_device", "all_reduce_sum", "any_rank_true", "gather_objects",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it (after a barrier: gloo aborts a
        process whose peer tears the group down while it is still connected)."""
        if self.owns_process_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's CUDA device when available, else CPU; anything else as given."""
    if preference == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.device={preference!r} but CUDA is not available; use 'cpu' or 'auto'")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_preference: str = "auto") -> DistributedContext:
    """Join the process group described by torchrun's environment, or run as one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size <= 1:
        return DistributedContext(0, 1, 0, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        owns = True
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op on one process)."""
    if context.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank_true(flag: bool | torch.Tensor, context: DistributedContext) -> bool | torch.Tensor:
    """True on every rank when ``flag`` is set on any rank, so all ranks take the same branch
    (a collective). A device flag (tensor) stays on the device; a host bool comes back a bool."""
    if not context.is_distributed:
        return flag
    # gloo reduces CPU tensors, NCCL needs device tensors
    tensor = flag.float() if torch.is_tensor(flag) else torch.tensor(float(flag), device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.bool() if torch.is_tensor(flag) else bool(tensor.item())


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``value`` in rank order, on every rank (a collective; picklable values)."""
    if not context.is_distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered
