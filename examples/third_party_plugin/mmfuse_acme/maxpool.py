"""Torch side of ``acme/max``: element-wise max over the present modalities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse.masking import present_pooled
from mmfuse_acme import MaxFusionConfig

__all__ = ["MaxFusion", "build_max_fusion"]


class MaxFusion(FusionHead):
    """Project each modality's pooled vector, take the element-wise max over the modalities a
    sample has (absent ones are excluded, never read), then an output layer. A sample with no
    modality at all gets the learned ``empty`` vector.

    Absent rows are zeroed *before* the projection (``present_pooled``): whatever they hold (NaN,
    1e30) must not reach a layer, whose weight gradient would read it (``0 * NaN`` is NaN)."""

    def __init__(self, config: MaxFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        self.projections = nn.ModuleDict({n: nn.Linear(input_dims[n], config.projection_dim) for n in self.names})
        self.empty = nn.Parameter(torch.zeros(config.projection_dim))
        self.output = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.projection_dim, config.output_dim))
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        projected, keep = [], []
        for name in self.names:
            if name in features:
                pooled, present_rows = present_pooled(features, present, name, self.projections[name].in_features)
                projected.append(self.projections[name](pooled))
                keep.append(present_rows)
        stacked = torch.stack(projected, dim=1)
        keep_mask = torch.stack(keep, dim=1).unsqueeze(-1)
        lowest = torch.finfo(stacked.dtype).min
        pooled = stacked.masked_fill(~keep_mask, lowest).amax(dim=1)
        anything = keep_mask.any(dim=1)
        pooled = torch.where(anything, pooled, self.empty.to(pooled.dtype).expand_as(pooled))
        return self.output(pooled)


def build_max_fusion(config: MaxFusionConfig, input_dims: dict[str, int]) -> MaxFusion:
    return MaxFusion(config, input_dims)
