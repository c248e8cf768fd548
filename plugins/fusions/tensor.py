"""``mmfuse/tensor`` (Tensor Fusion Network, Zadeh et al., 2017) and ``mmfuse/low_rank``
(Low-rank Multimodal Fusion, Liu et al., 2018).

Both work on ``z_m = [h_m; 1]`` per modality. The appended 1 keeps every lower-order term of the
outer product, so an absent modality is excluded by setting its ``h_m`` to zero *after* the
projection: its blocks of the product vanish and what remains is exactly the fusion of the present
modalities (the multiplicative identity, not a zero observation entering a layer)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse_plugins.fusions import LowRankFusionConfig, TensorFusionConfig
from mmfuse.masking import present_pooled, zero_absent
from mmfuse.mlp import build_mlp

__all__ = ["TensorFusion", "LowRankFusion", "build_tensor_fusion", "build_low_rank_fusion"]


class _AugmentedModalities(nn.Module):
    """Per encoder ``z_m = [h_m; 1]`` with ``h_m = W_m x_m`` (zero where the modality is absent)."""

    def __init__(self, input_dims: dict[str, int], width: int) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        self.input_dims = dict(input_dims)
        self.projections = nn.ModuleDict({name: nn.Linear(input_dims[name], width) for name in self.names})

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> list[Tensor]:
        augmented = []
        for name in self.names:
            pooled, keep = present_pooled(features, present, name, self.input_dims[name])
            hidden = zero_absent(self.projections[name](pooled), keep)
            augmented.append(torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=-1))
        return augmented


class TensorFusion(FusionHead):
    """Flattened outer product ``z_1 (x) z_2 (x) ... (x) z_M`` followed by an MLP."""

    def __init__(self, config: TensorFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        product_size = (config.projection_dim + 1) ** len(input_dims)
        if product_size > config.max_product_size:
            raise ValueError(
                f"tensor fusion of {len(input_dims)} encoders with projection_dim={config.projection_dim} "
                f"has an outer product of {product_size} values (max_product_size={config.max_product_size}); "
                "lower projection_dim, raise max_product_size, or use fusion type 'low_rank'"
            )
        self.modalities = _AugmentedModalities(input_dims, config.projection_dim)
        self.mlp = build_mlp(product_size, config.hidden_dims, config.output_dim, dropout=config.dropout, activation=nn.ReLU)
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        augmented = self.modalities(features, present)
        product = augmented[0]
        for z in augmented[1:]:
            product = (product.unsqueeze(-1) * z.unsqueeze(1)).flatten(1)
        return self.mlp(product)


class LowRankFusion(FusionHead):
    """``sum_r w_r * prod_m (W_m^(r) z_m) + b``: the tensor-fusion weight factorised into ``rank``
    modality-specific factors, never materialising the outer product."""

    def __init__(self, config: LowRankFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.modalities = _AugmentedModalities(input_dims, config.projection_dim)
        self.factors = nn.ParameterList(
            [
                nn.Parameter(torch.empty(config.rank, config.projection_dim + 1, config.output_dim))
                for _ in self.modalities.names
            ]
        )
        for factor in self.factors:
            bound = math.sqrt(6.0 / (config.projection_dim + 1 + config.output_dim))
            nn.init.uniform_(factor, -bound, bound)
        self.rank_weights = nn.Parameter(torch.full((config.rank,), 1.0 / config.rank))
        self.bias = nn.Parameter(torch.zeros(config.output_dim))
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        augmented = self.modalities(features, present)
        product = None
        for z, factor in zip(augmented, self.factors):
            projected = torch.einsum("bd,rdo->rbo", z, factor.to(z.dtype))
            product = projected if product is None else product * projected
        fused = torch.einsum("r,rbo->bo", self.rank_weights.to(product.dtype), product) + self.bias.to(product.dtype)
        return self.dropout(fused)


def build_tensor_fusion(config: TensorFusionConfig, input_dims: dict[str, int]) -> TensorFusion:
    return TensorFusion(config, input_dims)


def build_low_rank_fusion(config: LowRankFusionConfig, input_dims: dict[str, int]) -> LowRankFusion:
    return LowRankFusion(config, input_dims)
