"""The loss of one micro-batch as a module, so that DDP wraps the forward and the loss together,
and what that module does with a batch whose rows were all skipped.

With ``data.on_bad_sample: skip`` the collate function returns a batch with no ``inputs`` when
every row of it was bad. One process simply steps over such a batch. Under DDP that is not
possible: the other ranks' backward passes all-reduce gradients, and a rank that skipped the
backward would leave them waiting (or pair their collectives wrongly). So the rank runs the step
with a zero loss connected to every trainable parameter: its backward all-reduces zero gradients
and the collectives stay in lockstep, without any extra per-step communication.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmfuse.model import FusedModel

__all__ = ["LossStep", "is_empty_batch", "zero_loss"]


def is_empty_batch(batch: dict[str, Any]) -> bool:
    """Whether every row of the batch was skipped (the collate function left ``inputs`` empty)."""
    return not batch.get("inputs")


def zero_loss(module: nn.Module) -> torch.Tensor:
    """``0 * sum(params)``: a zero loss whose backward gives every trainable parameter a zero gradient."""
    trainable = [parameter.sum() for parameter in module.parameters() if parameter.requires_grad]
    if not trainable:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.stack(trainable).sum() * 0.0


class LossStep(nn.Module):
    """``batch -> weighted task loss`` of a FusedModel (a zero loss for an empty batch)."""

    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        if is_empty_batch(batch):
            return zero_loss(self.model)
        outputs = self.model(batch)
        loss, _ = self.model.compute_loss(outputs, batch.get("targets", {}))
        return loss
