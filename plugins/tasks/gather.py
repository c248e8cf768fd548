"""Gathering a batch tensor from every process while keeping the gradient of the local part
(for contrastive negatives under DDP)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["distributed_world", "gather_with_local_grad"]


def distributed_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx, tensor: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def gather_with_local_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` ``[b_r, ...]`` of every process in rank order; the local slice is
    ``tensor`` itself, so gradients flow to it (the other slices are constants).

    Every process computes the loss over the gathered batch and back-propagates only into its own
    slice; DDP then averages those gradients over the ``W`` processes. The local slice's gradient
    is therefore multiplied by ``W`` here, so that after DDP's average the parameter gradient is
    the one of a single process holding the concatenated batch. Batch sizes may differ between
    processes (a short last batch). Without an initialised process group: ``tensor`` unchanged."""
    rank, world = distributed_world()
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor.detach()
    if tensor.shape[0] < longest:
        filler = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([padded, filler])
    slots = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(slots, padded.contiguous())
    parts = [slot[:count] for slot, count in zip(slots, counts)]
    parts[rank] = _ScaleGradient.apply(tensor, float(world))
    return torch.cat(parts)
