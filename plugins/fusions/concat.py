"""``mmfuse/concat``: late fusion by concatenation of projected pooled vectors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse_plugins.fusions import ConcatFusionConfig

__all__ = ["ConcatFusion", "build_concat_fusion"]


class ConcatFusion(FusionHead):
    """Project each modality's pooled vector, zero the rows of absent modalities *after*
    projection (so the absent input's content never reaches the output), append the presence
    flags, concatenate, MLP."""

    def __init__(self, config: ConcatFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        self.projections = nn.ModuleDict(
            {name: nn.Linear(input_dims[name], config.projection_dim) for name in self.names}
        )
        width = config.projection_dim * len(self.names) + len(self.names)
        layers: list[nn.Module] = []
        for hidden in config.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, config.output_dim))
        self.mlp = nn.Sequential(*layers)
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        parts, flags = [], []
        reference = next(iter(features.values())).pooled
        for name in self.names:
            if name in features:
                mask = present[name].to(reference.dtype).unsqueeze(-1)
                projected = self.projections[name](features[name].pooled)
                parts.append(torch.where(mask.bool(), projected, torch.zeros_like(projected)))
                flags.append(mask)
            else:
                parts.append(reference.new_zeros(reference.shape[0], self.projections[name].out_features))
                flags.append(reference.new_zeros(reference.shape[0], 1))
        return self.mlp(torch.cat(parts + flags, dim=-1))


def build_concat_fusion(config: ConcatFusionConfig, input_dims: dict[str, int]) -> ConcatFusion:
    return ConcatFusion(config, input_dims)
