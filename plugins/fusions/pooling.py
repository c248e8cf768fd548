"""``mmfuse/mean``, ``mmfuse/sum`` and ``mmfuse/attention``: pool projected per-modality vectors
over the modalities each sample has."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse_plugins.fusions import AttentionFusionConfig, PoolingFusionConfig
from mmfuse.masking import masked_softmax, present_pooled, zero_absent

__all__ = [
    "ProjectedModalities",
    "ReduceFusion",
    "AttentionFusion",
    "build_mean_fusion",
    "build_sum_fusion",
    "build_attention_fusion",
]


class ProjectedModalities(nn.Module):
    """One Linear per encoder into a shared width; returns ``[B, M, D]`` and presence ``[B, M]``.

    Rows of absent modalities are zero in the result (never the projection's bias), so a plain sum
    over modalities already leaves them out."""

    def __init__(self, input_dims: dict[str, int], width: int) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        self.input_dims = dict(input_dims)
        self.projections = nn.ModuleDict({name: nn.Linear(input_dims[name], width) for name in self.names})

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        vectors, keeps = [], []
        for name in self.names:
            pooled, keep = present_pooled(features, present, name, self.input_dims[name])
            vectors.append(zero_absent(self.projections[name](pooled), keep))
            keeps.append(keep)
        return torch.stack(vectors, dim=1), torch.stack(keeps, dim=1)


class ReduceFusion(FusionHead):
    """Mean or sum of the projected vectors of the present modalities (zero when none is)."""

    def __init__(self, config: PoolingFusionConfig, input_dims: dict[str, int], reduction: str) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.modalities = ProjectedModalities(input_dims, config.output_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        vectors, keep = self.modalities(features, present)
        total = vectors.sum(dim=1)
        if self.reduction == "mean":
            total = total / keep.sum(dim=1, keepdim=True).clamp_min(1).to(total.dtype)
        return self.dropout(total)


class AttentionFusion(FusionHead):
    """Additive attention over modalities: ``a_m = softmax_m(v . tanh(W h_m))`` over the present
    ones, output ``sum_m a_m h_m``. ``last_weights`` keeps the latest ``[B, M]`` weights (modality
    order: sorted encoder names) for inspection."""

    def __init__(self, config: AttentionFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.modalities = ProjectedModalities(input_dims, config.output_dim)
        self.score = nn.Sequential(
            nn.Linear(config.output_dim, config.attention_dim),
            nn.Tanh(),
            nn.Linear(config.attention_dim, 1, bias=False),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = config.output_dim
        self.last_weights: Tensor | None = None

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        vectors, keep = self.modalities(features, present)
        weights = masked_softmax(self.score(vectors).squeeze(-1), keep, dim=1)
        self.last_weights = weights.detach()
        return self.dropout((weights.unsqueeze(-1) * vectors).sum(dim=1))


def build_mean_fusion(config: PoolingFusionConfig, input_dims: dict[str, int]) -> ReduceFusion:
    return ReduceFusion(config, input_dims, "mean")


def build_sum_fusion(config: PoolingFusionConfig, input_dims: dict[str, int]) -> ReduceFusion:
    return ReduceFusion(config, input_dims, "sum")


def build_attention_fusion(config: AttentionFusionConfig, input_dims: dict[str, int]) -> AttentionFusion:
    return AttentionFusion(config, input_dims)
