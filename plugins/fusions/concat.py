"""``mmfuse/concat``: late fusion by concatenation of projected pooled vectors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse_plugins.fusions import ConcatFusionConfig
from mmfuse.masking import present_pooled
from mmfuse.mlp import build_mlp

__all__ = ["ConcatFusion", "build_concat_fusion"]


class ConcatFusion(FusionHead):
    """Project each modality's pooled vector, concatenate in a fixed (sorted) order, MLP.

    An absent modality's slot holds a learned "absent" embedding of that modality instead of its
    projection, so the MLP sees "missing" as its own state rather than as a zero observation."""

    def __init__(self, config: ConcatFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        self.input_dims = dict(input_dims)
        self.projections = nn.ModuleDict(
            {name: nn.Linear(input_dims[name], config.projection_dim) for name in self.names}
        )
        self.absent = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(config.projection_dim)) for name in self.names}
        )
        width = config.projection_dim * len(self.names)
        self.mlp = build_mlp(width, config.hidden_dims, config.output_dim, dropout=config.dropout, activation=nn.GELU)
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        parts = []
        for name in self.names:
            pooled, keep = present_pooled(features, present, name, self.input_dims[name])
            projected = self.projections[name](pooled)
            absent = self.absent[name].to(projected.dtype).expand_as(projected)
            parts.append(torch.where(keep.unsqueeze(-1), projected, absent))
        return self.mlp(torch.cat(parts, dim=-1))


def build_concat_fusion(config: ConcatFusionConfig, input_dims: dict[str, int]) -> ConcatFusion:
    return ConcatFusion(config, input_dims)
