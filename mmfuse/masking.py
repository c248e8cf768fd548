"""Presence masking for fusion heads and tasks: which (sample, modality) pairs are real, and how to
keep the content of absent ones out of every computation. Public helpers for plugin authors.

Two rules hold in every built-in head:

1. The rows (and padding tokens) of an absent modality are replaced by zeros *before* any layer
   sees them, with ``torch.where`` (not a multiplication: ``0 * NaN`` is NaN). Whatever the
   collate function or the encoder produced there - garbage, NaN, 1e30 - never reaches a value or
   a gradient.
2. The head then *excludes* the absent modality by the mask (masked mean, masked softmax, key
   padding, a learned "absent" embedding): the zeros of rule 1 are a numerical safety net, never
   a value that the head treats as an observation.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from mmfuse.contracts import EncoderOutput

__all__ = ["batch_reference", "zero_absent", "present_pooled", "present_tokens", "masked_softmax"]


def batch_reference(features: Mapping[str, EncoderOutput]) -> Tensor:
    """A pooled tensor of the batch, giving batch size, device and dtype."""
    if not features:
        raise ValueError("a fusion head needs the output of at least one encoder")
    return next(iter(features.values())).pooled


def zero_absent(values: Tensor, keep: Tensor) -> Tensor:
    """``values`` with every position where ``keep`` is False set to 0 (NaN-safe).

    ``keep`` has the leading shape of ``values`` (``[B]`` for ``[B, D]``, ``[B, T]`` for
    ``[B, T, D]``)."""
    keep = keep.reshape(keep.shape + (1,) * (values.dim() - keep.dim()))
    return torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _presence(features: Mapping[str, EncoderOutput], present: Mapping[str, Tensor], name: str) -> Tensor:
    reference = batch_reference(features)
    if name not in features:
        # the batch carried no input for this encoder at all: absent for every sample
        return torch.zeros(reference.shape[0], dtype=torch.bool, device=reference.device)
    mask = present.get(name)
    if mask is None:
        return torch.ones(reference.shape[0], dtype=torch.bool, device=reference.device)
    return mask.to(device=reference.device, dtype=torch.bool)


def present_pooled(
    features: Mapping[str, EncoderOutput], present: Mapping[str, Tensor], name: str, dim: int
) -> tuple[Tensor, Tensor]:
    """(pooled ``[B, dim]`` with absent rows zeroed, presence ``[B]`` bool) of one encoder."""
    keep = _presence(features, present, name)
    if name not in features:
        reference = batch_reference(features)
        return reference.new_zeros(reference.shape[0], dim), keep
    return zero_absent(features[name].pooled, keep), keep


def present_tokens(
    features: Mapping[str, EncoderOutput], present: Mapping[str, Tensor], name: str, dim: int
) -> tuple[Tensor, Tensor]:
    """(tokens ``[B, T, dim]`` with padding and absent rows zeroed, valid ``[B, T]`` bool) where a
    token is valid when it is real (token mask) AND its sample has the modality."""
    keep = _presence(features, present, name)
    if name not in features:
        reference = batch_reference(features)
        size = reference.shape[0]
        return reference.new_zeros(size, 1, dim), torch.zeros(size, 1, dtype=torch.bool, device=keep.device)
    output = features[name]
    valid = output.mask.to(device=keep.device, dtype=torch.bool) & keep.unsqueeze(-1)
    return zero_absent(output.tokens, valid), valid


def masked_softmax(scores: Tensor, keep: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` counting only positions where ``keep`` is True.

    A slice with nothing kept gets all-zero weights (not NaN), so a sample without any modality
    yields a finite (zero) weighted sum."""
    filled = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim)
    return torch.where(keep, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))

