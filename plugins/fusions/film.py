"""``mmfuse/film``: Feature-wise Linear Modulation (Perez et al., 2018) across modalities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead, masked_mean
from mmfuse_plugins.fusions import FilmFusionConfig
from mmfuse.masking import present_tokens, zero_absent
from mmfuse_plugins.fusions.pooling import ProjectedModalities

__all__ = ["FilmFusion", "build_film_fusion"]


class FilmFusion(FusionHead):
    """The conditioning encoders' pooled vectors (mean over the present ones) produce a per-feature
    scale ``gamma`` and shift ``beta``; the target encoder's projected tokens become
    ``GELU((1 + gamma) * t + beta)``, averaged over its real tokens, then projected.

    Without any present conditioning modality the modulation is the identity. Without the target,
    a learned "absent target" vector is modulated instead, so the conditioning still reaches the
    output. The scale/shift generator starts at zero: training starts from the identity."""

    def __init__(self, config: FilmFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.target, self.conditioning = _resolve_roles(config, input_dims)
        self.input_dims = dict(input_dims)
        width = config.hidden_dim
        self.target_projection = nn.Linear(input_dims[self.target], width)
        self.condition_projections = ProjectedModalities({n: input_dims[n] for n in self.conditioning}, width)
        self.modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.absent_target = nn.Parameter(torch.zeros(width))
        self.output = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.output_dim))
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        vectors, keep = self.condition_projections(features, present)
        condition = vectors.sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp_min(1).to(vectors.dtype)
        has_condition = keep.any(dim=1)
        gamma, beta = zero_absent(self.modulation(condition), has_condition).chunk(2, dim=-1)
        tokens, valid = present_tokens(features, present, self.target, self.input_dims[self.target])
        projected = self.target_projection(tokens)
        modulated = F.gelu((1 + gamma.unsqueeze(1)) * projected + beta.unsqueeze(1))
        pooled = masked_mean(modulated, valid)
        absent = F.gelu((1 + gamma) * self.absent_target.to(gamma.dtype) + beta)
        pooled = torch.where(valid.any(dim=1, keepdim=True), pooled, absent)
        return self.output(pooled)


def _resolve_roles(config: FilmFusionConfig, input_dims: dict[str, int]) -> tuple[str, list[str]]:
    known = sorted(input_dims)
    if config.target not in input_dims:
        raise ValueError(f"film: target '{config.target}' is not an encoder of this recipe; encoders: {known}")
    conditioning = config.conditioning
    if conditioning is None:
        conditioning = [name for name in known if name != config.target]
    unknown = [name for name in conditioning if name not in input_dims]
    if unknown:
        raise ValueError(f"film: conditioning names unknown encoder(s) {unknown}; encoders: {known}")
    if not conditioning:
        raise ValueError(
            f"film needs a second encoder to condition '{config.target}'; this recipe has only {known}"
        )
    unused = [name for name in known if name != config.target and name not in conditioning]
    if unused:
        raise ValueError(
            f"film: encoder(s) {unused} would be computed but never used; add them to "
            "fusion.conditioning or remove them from the recipe"
        )
    return config.target, sorted(conditioning)


def build_film_fusion(config: FilmFusionConfig, input_dims: dict[str, int]) -> FilmFusion:
    return FilmFusion(config, input_dims)
