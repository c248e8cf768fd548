"""Text augmentation: token dropout (tokens replaced by the unknown token, special tokens kept)."""

from __future__ import annotations

from typing import Collection

import torch
from torch import Tensor

__all__ = ["drop_tokens"]


def drop_tokens(ids: Tensor, probability: float, unknown_id: int, keep: Collection[int], generator: torch.Generator) -> Tensor:
    """``ids`` with each token not in ``keep`` replaced by ``unknown_id`` with ``probability``."""
    if probability <= 0 or ids.numel() == 0:
        return ids
    hit = torch.rand(ids.shape, generator=generator) < probability
    if keep:
        hit &= ~torch.isin(ids, torch.tensor(sorted(keep), dtype=ids.dtype))
    return torch.where(hit, torch.full_like(ids, unknown_id), ids)
