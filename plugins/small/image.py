"""Torch side of ``mmfuse/image_cnn``: images at their native size (or resized), 1 or 3 channels,
through a masked conv stack trained from scratch."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput
from mmfuse.preprocessing.image import ImagePreprocessor
from mmfuse_plugins.small import ImageCNNConfig
from mmfuse_plugins.small.conv import MaskedConvStack, masked_global_pool

__all__ = ["ImageCNNEncoder", "build_image_cnn", "image_cnn_settings"]


def image_cnn_settings(config: ImageCNNConfig) -> dict[str, Any]:
    """Plain preprocessing settings; statistics given as one value apply to every channel."""
    size = config.image_size
    statistics = {
        key: value if value == "auto" else [float(v) for v in (value * config.channels if len(value) == 1 else value)]
        for key, value in (("mean", config.mean), ("std", config.std))
    }
    return {
        "image_size": None if size is None else ([size, size] if isinstance(size, int) else list(size)),
        "interpolation": config.interpolation,
        "crop_pct": 1.0,  # resized to the exact size, never cropped
        "crop_mode": "squash",
        "channels": config.channels,
        **statistics,
    }


class ImageCNNEncoder(Encoder):
    """Tokens are the final feature map's positions ``[B, H'*W', widths[-1]]`` (padding masked);
    pooled is their masked mean (or max)."""

    modality = "image"

    def __init__(self, config: ImageCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.stack = MaskedConvStack(config.channels, config)
        self.output_dim = self.stack.output_dim
        self._settings = image_cnn_settings(config)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        pixels = inputs["pixels"]
        mask = inputs.get("pixel_mask")
        if mask is None:
            mask = pixels.new_ones(pixels.shape[0], *pixels.shape[2:], dtype=bool)
        features, feature_mask = self.stack(pixels, mask.bool())
        tokens = features.flatten(2).transpose(1, 2)
        token_mask = feature_mask.flatten(1)
        return EncoderOutput(tokens=tokens, mask=token_mask, pooled=masked_global_pool(tokens, token_mask, self.config.global_pooling))

    def preprocessor(self) -> ImagePreprocessor:
        # the settings dict is shared: mean/std learned by the preprocessor's fit land here too
        return ImagePreprocessor(self._settings, self.config.augment, with_mask=True)

    def layer_groups(self) -> list[nn.Module]:
        return list(self.stack.blocks)

    def export_assets(self, folder: str) -> dict[str, Any]:
        return {"mean": self._settings["mean"], "std": self._settings["std"]}


def build_image_cnn(config: ImageCNNConfig) -> ImageCNNEncoder:
    return ImageCNNEncoder(config)
