"""Torch side of ``mmfuse/video_frames``: a timm image backbone per frame, then temporal pooling."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.backbones.image_settings import resolve_image_settings
from mmfuse.backbones.timm_models import create_timm_backbone, timm_features, timm_layer_groups, timm_rebuild_args
from mmfuse.contracts import Encoder, EncoderOutput, masked_mean
from mmfuse_plugins.video import VideoFramesConfig
from mmfuse_plugins.video.decode import VideoPreprocessor

__all__ = ["TemporalTransformer", "FramesVideoEncoder", "build_frames_encoder"]


class TemporalTransformer(nn.Module):
    """A small transformer over frame features with learned frame positions; padded frames masked."""

    def __init__(self, dim: int, num_frames: int, layers: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"temporal_heads={heads} must divide the backbone width {dim}")
        self.positions = nn.Parameter(torch.zeros(1, num_frames, dim))
        nn.init.trunc_normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, frames: Tensor, mask: Tensor) -> Tensor:
        return self.encoder(frames + self.positions[:, : frames.shape[1]], src_key_padding_mask=~mask)


class FramesVideoEncoder(Encoder):
    """Tokens are per-frame features ``[B, num_frames, D]`` (after the temporal transformer when
    configured); pooled is their mean over the real frames."""

    modality = "video"

    def __init__(self, config: VideoFramesConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.output_dim = int(backbone.num_features)
        self._image_settings = resolve_image_settings(backbone, config)
        self.temporal = (
            TemporalTransformer(self.output_dim, config.num_frames, config.temporal_layers, config.temporal_heads)
            if config.temporal == "transformer"
            else None
        )

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        frames, mask = inputs["frames"], inputs["frame_mask"].bool()
        batch, count = frames.shape[:2]
        _, pooled_frames = timm_features(self.backbone, frames.flatten(0, 1))
        tokens = pooled_frames.view(batch, count, -1)
        if self.temporal is not None:
            tokens = self.temporal(tokens, mask)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))

    def preprocessor(self) -> VideoPreprocessor:
        c = self.config
        return VideoPreprocessor(
            self._image_settings, c.num_frames, c.sampling, c.fps, augment=c.augment, decoder=c.decoder
        )

    def layer_groups(self) -> list[nn.Module]:
        groups = timm_layer_groups(self.backbone)
        return groups + [self.temporal] if self.temporal is not None else groups

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def export_assets(self, folder: str) -> dict[str, Any]:
        return timm_rebuild_args(self.backbone, self.config.model_kwargs, self._image_settings)


def build_frames_encoder(config: VideoFramesConfig) -> FramesVideoEncoder:
    backbone = create_timm_backbone(
        config.model, pretrained=config.pretrained, checkpoint=config.checkpoint, model_kwargs=config.model_kwargs
    )
    return FramesVideoEncoder(config, backbone)
