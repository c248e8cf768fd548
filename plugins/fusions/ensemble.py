"""``mmfuse/ensemble``: late-fusion ensembling of per-modality classifiers.

Each encoder gets its own classifier; their log-probabilities are combined with learned weights
renormalised over the modalities a row has: ``z = sum_m w_m log p_m`` with
``w = softmax(a)`` over the present modalities, output ``log_softmax(z)`` (a weighted product of
experts). A missing modality has weight 0 and its classifier output never enters; a row without
any modality gets the uniform distribution. The strong baseline that a fused head must beat.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead
from mmfuse.masking import masked_softmax, present_pooled, zero_absent
from mmfuse_plugins.fusions import EnsembleFusionConfig

__all__ = ["EnsembleFusion", "build_ensemble_fusion"]


def _classifier(in_dim: int, classes: int, hidden_dim: int | None, dropout: float) -> nn.Module:
    if hidden_dim is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, classes))
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, classes))


class EnsembleFusion(FusionHead):
    """Output ``[B, num_classes]``: the combined log-probabilities. ``last_weights`` keeps the
    latest ``[B, M]`` modality weights (order: sorted encoder names)."""

    def __init__(self, config: EnsembleFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.names = sorted(input_dims)
        self.input_dims = dict(input_dims)
        self.classifiers = nn.ModuleDict(
            {
                name: _classifier(input_dims[name], config.num_classes, config.hidden_dim, config.dropout)
                for name in self.names
            }
        )
        self.weight_logits = nn.Parameter(torch.zeros(len(self.names)))
        self.output_dim = config.num_classes
        self.last_weights: Tensor | None = None

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        log_probs, keeps = [], []
        for name in self.names:
            pooled, keep = present_pooled(features, present, name, self.input_dims[name])
            log_p = torch.log_softmax(self.classifiers[name](pooled).float(), dim=-1)
            log_probs.append(zero_absent(log_p, keep))
            keeps.append(keep)
        stacked = torch.stack(log_probs, dim=1)  # [B, M, C]
        keep = torch.stack(keeps, dim=1)  # [B, M]
        scores = self.weight_logits.float().unsqueeze(0).expand(keep.shape[0], -1)
        weights = masked_softmax(scores, keep, dim=1)
        self.last_weights = weights.detach()
        combined = (weights.unsqueeze(-1) * stacked).sum(dim=1)
        return torch.log_softmax(combined, dim=-1)


def build_ensemble_fusion(config: EnsembleFusionConfig, input_dims: dict[str, int]) -> EnsembleFusion:
    return EnsembleFusion(config, input_dims)
