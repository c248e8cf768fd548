"""Torch side of ``mmfuse/image_timm``: a timm backbone returning spatial/patch tokens and a pooled vector."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.backbones.image_settings import resolve_image_settings
from mmfuse.backbones.timm_models import create_timm_backbone, timm_features, timm_layer_groups, timm_rebuild_args
from mmfuse.contracts import Encoder, EncoderOutput
from mmfuse_plugins.image_timm import ImageTimmConfig
from mmfuse.preprocessing.image import ImagePreprocessor

__all__ = ["ImageTimmEncoder", "build_image_encoder"]


class ImageTimmEncoder(Encoder):
    modality = "image"

    def __init__(self, config: ImageTimmConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.output_dim = int(backbone.num_features)
        self._settings = resolve_image_settings(backbone, config)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        tokens, pooled = timm_features(self.backbone, inputs["pixels"])
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def preprocessor(self) -> ImagePreprocessor:
        # the settings dict is shared: mean/std learned by the preprocessor's fit land here too
        return ImagePreprocessor(self._settings, self.config.augment)

    def layer_groups(self) -> list[nn.Module]:
        return timm_layer_groups(self.backbone)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def export_assets(self, folder: str) -> dict[str, Any]:
        return timm_rebuild_args(self.backbone, self.config.model_kwargs, self._settings)


def build_image_encoder(config: ImageTimmConfig) -> ImageTimmEncoder:
    backbone = create_timm_backbone(
        config.model,
        pretrained=config.pretrained,
        checkpoint=config.checkpoint,
        model_kwargs=config.model_kwargs,
        in_chans=config.channels if config.channels != 3 else None,
    )
    return ImageTimmEncoder(config, backbone)
