"""``mmfuse/image_timm``: any ``timm.create_model`` image backbone, with preprocessing resolved from
the model's own pretrained config (size, interpolation, mean/std, crop) and optional overrides."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mmfuse.backbones.image_settings import ImagePreprocessingOverrides
from mmfuse.hookspecs import hookimpl

__all__ = ["ImageTimmConfig", "ImagePreprocessingOverrides"]


class ImageTimmConfig(ImagePreprocessingOverrides):
    model: str = Field(
        ...,
        description="timm model name ('resnet50', 'vit_base_patch16_224.augreg_in21k'), "
        "'hf-hub:org/name' or 'local-dir:/path/to/folder'",
    )
    pretrained: bool = Field(True, description="load the model's pretrained weights")
    checkpoint: str | None = Field(None, description="local checkpoint file (.pth / .safetensors) to load")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra timm.create_model arguments (img_size, drop_path_rate...)"
    )


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "mmfuse/image_timm",
        builder="mmfuse_plugins.image_timm.encoder:build_image_encoder",
        config=ImageTimmConfig,
        description="image file -> timm backbone (patch/spatial tokens + pooled vector)",
        aliases=("image",),
    )
