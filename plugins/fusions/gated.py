"""``mmfuse/gated``: the Gated Multimodal Unit (Arevalo et al., 2017), generalised to any number of
modalities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse_plugins.fusions import GatedFusionConfig
from mmfuse.masking import masked_softmax, present_pooled

__all__ = ["GatedFusion", "build_gated_fusion"]


class GatedFusion(FusionHead):
    """``h_m = tanh(W_m x_m)``; per-dimension gates ``z = softmax_m(W_z [h_1; ...; h_M])`` over the
    present modalities; output ``sum_m z_m * h_m``.

    With two modalities the softmax gate equals the GMU's ``sigmoid`` gate ``z`` / ``1 - z``. An
    absent modality gets gate 0, and the gate network sees a learned "absent" embedding in its
    slot, not a zero vector."""

    def __init__(self, config: GatedFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        self.input_dims = dict(input_dims)
        width = config.output_dim
        self.hidden = nn.ModuleDict({name: nn.Linear(input_dims[name], width) for name in self.names})
        self.absent = nn.ParameterDict({name: nn.Parameter(torch.zeros(width)) for name in self.names})
        self.gate = nn.Linear(width * len(self.names), width * len(self.names))
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = width

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        hiddens, gate_inputs, keeps = [], [], []
        for name in self.names:
            pooled, keep = present_pooled(features, present, name, self.input_dims[name])
            hidden = torch.tanh(self.hidden[name](pooled))
            absent = self.absent[name].to(hidden.dtype).expand_as(hidden)
            hiddens.append(torch.where(keep.unsqueeze(-1), hidden, torch.zeros_like(hidden)))
            gate_inputs.append(torch.where(keep.unsqueeze(-1), hidden, absent))
            keeps.append(keep)
        stacked = torch.stack(hiddens, dim=1)  # [B, M, D]
        keep = torch.stack(keeps, dim=1).unsqueeze(-1).expand_as(stacked)
        logits = self.gate(torch.cat(gate_inputs, dim=-1)).view_as(stacked)
        gates = masked_softmax(logits, keep, dim=1)
        return self.dropout((gates * stacked).sum(dim=1))


def build_gated_fusion(config: GatedFusionConfig, input_dims: dict[str, int]) -> GatedFusion:
    return GatedFusion(config, input_dims)
