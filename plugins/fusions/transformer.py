"""``mmfuse/transformer``: a cross-modal transformer over the tokens of every modality."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfuse.contracts import EncoderOutput, FusionHead, masked_mean
from mmfuse_plugins.fusions import TransformerFusionConfig
from mmfuse.masking import present_pooled, present_tokens

__all__ = ["TransformerFusion", "build_transformer_fusion"]


class TransformerFusion(FusionHead):
    """``[CLS] + tokens of every modality`` (each projected to ``d_model`` plus a learned modality
    embedding) through a pre-norm transformer encoder.

    The key padding mask hides a token unless it is real (the encoder's token mask) AND its sample
    has the modality, so no token attends to padding or to an absent modality. The CLS token is
    always visible, which keeps attention defined for a sample without any modality. Output: the
    CLS token, or the mean of the visible tokens (the CLS token where there are none).
    Positional information comes from the encoders; the fusion adds none."""

    def __init__(self, config: TransformerFusionConfig, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.config = config
        self.names = sorted(input_dims)
        self.input_dims = dict(input_dims)
        width = config.d_model
        self.projections = nn.ModuleDict({name: nn.Linear(input_dims[name], width) for name in self.names})
        self.modality_embeddings = nn.Parameter(torch.randn(len(self.names), width) * 0.02)
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            config.num_heads,
            config.ff_dim or 4 * width,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.output_dim = width

    def _modality_tokens(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor], name: str
    ) -> tuple[Tensor, Tensor]:
        if self.config.tokens == "pooled":
            pooled, keep = present_pooled(features, present, name, self.input_dims[name])
            return pooled.unsqueeze(1), keep.unsqueeze(1)
        return present_tokens(features, present, name, self.input_dims[name])

    def forward(self, features: dict[str, EncoderOutput], present: dict[str, Tensor]) -> Tensor:
        sequences, visible = [], []
        for index, name in enumerate(self.names):
            tokens, valid = self._modality_tokens(features, present, name)
            sequences.append(self.projections[name](tokens) + self.modality_embeddings[index].to(tokens.dtype))
            visible.append(valid)
        body = torch.cat(sequences, dim=1)
        cls = self.cls.to(body.dtype).expand(body.shape[0], 1, -1)
        tokens = torch.cat([cls, body], dim=1)
        body_visible = torch.cat(visible, dim=1)
        cls_visible = torch.ones(body.shape[0], 1, dtype=torch.bool, device=body_visible.device)
        visible_mask = torch.cat([cls_visible, body_visible], dim=1)
        hidden = self.norm(self.encoder(tokens, src_key_padding_mask=~visible_mask))
        if self.config.pooling == "cls":
            return hidden[:, 0]
        mean = masked_mean(hidden[:, 1:], body_visible)
        return torch.where(body_visible.any(dim=1, keepdim=True), mean, hidden[:, 0])


def build_transformer_fusion(config: TransformerFusionConfig, input_dims: dict[str, int]) -> TransformerFusion:
    return TransformerFusion(config, input_dims)
