"""Modality dropout: drop whole modalities of training rows through the presence mask.

A dropped modality is marked absent in ``batch["present"]``, so every fusion head excludes it
exactly as it excludes a modality the row never had (and an encoder that runs only on present
rows does no work for it). The head thereby learns to use each modality alone and together.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mmfuse.balance.config import ModalityDropoutConfig

__all__ = ["ModalityDropout", "build_modality_dropout"]


class ModalityDropout(nn.Module):
    """In training mode, each present modality of a row is dropped with its probability; a row
    keeps at least ``min(min_present, modalities it has)`` of them (dropped ones are restored at
    random until it does). Identity in eval mode. Has no parameters."""

    def __init__(self, probabilities: Mapping[str, float], min_present: int = 1) -> None:
        super().__init__()
        if min_present < 1:
            raise ValueError(f"min_present must be at least 1, got {min_present}")
        self.names = list(probabilities)
        self.min_present = int(min_present)
        self.register_buffer(
            "probabilities", torch.tensor([float(probabilities[n]) for n in self.names]), persistent=False
        )

    def forward(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The batch with modalities dropped (a shallow copy; the caller's dicts are untouched)."""
        if not self.training:
            return batch
        inputs = batch.get("inputs", {})
        names = [n for n in self.names if n in inputs]
        if not names:
            return batch
        size = _batch_size(inputs[names[0]])
        given = batch.get("present", {})
        device = self.probabilities.device
        present = torch.stack(
            [
                given[n].to(device=device, dtype=torch.bool)
                if given.get(n) is not None
                else torch.ones(size, dtype=torch.bool, device=device)
                for n in names
            ],
            dim=1,
        )
        probabilities = self.probabilities[[self.names.index(n) for n in names]]
        kept = self.drop(present, probabilities)
        return {**batch, "present": {**given, **{n: kept[:, i] for i, n in enumerate(names)}}}

    def drop(self, present: Tensor, probabilities: Tensor) -> Tensor:
        """``present`` ``[B, M]`` bool -> kept ``[B, M]``: a subset of ``present`` with at least
        ``min(min_present, present.sum(1))`` True per row."""
        dropped = present & (torch.rand(present.shape, device=present.device) < probabilities)
        kept = present & ~dropped
        floor = present.sum(1).clamp(max=self.min_present)
        need = (floor - kept.sum(1)).clamp(min=0)
        # restore `need` of the dropped modalities, picked at random: rank the dropped ones by a
        # random priority and restore those ranked below `need`
        priority = torch.where(dropped, torch.rand(present.shape, device=present.device), -1.0)
        rank = priority.argsort(dim=1, descending=True).argsort(dim=1)
        return kept | (dropped & (rank < need.unsqueeze(1)))


def _batch_size(tensors: Mapping[str, Tensor]) -> int:
    for value in tensors.values():
        return int(value.shape[0])
    raise ValueError("an encoder's inputs hold no tensor: cannot tell the batch size")


def build_modality_dropout(config: ModalityDropoutConfig | None, encoders: list[str]) -> ModalityDropout | None:
    """The module for ``fusion.modality_dropout`` (None when not configured)."""
    if config is None:
        return None
    if isinstance(config.p, dict):
        unknown = sorted(set(config.p) - set(encoders))
        if unknown:
            raise ValueError(
                f"fusion.modality_dropout.p names {unknown}, which are not encoders of this recipe; "
                f"encoders: {', '.join(encoders)}"
            )
    return ModalityDropout({name: config.probability_of(name) for name in encoders}, config.min_present)
