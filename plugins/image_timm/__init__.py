"""``mmfuse/image_timm``: any ``timm.create_model`` image backbone, with preprocessing resolved from
the model's own pretrained config (size, interpolation, mean/std, crop) and optional overrides."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mmfuse.backbones.image_settings import ImagePreprocessingOverrides
from mmfuse.hookspecs import hookimpl
from mmfuse.augment import ImageAugmentConfig

__all__ = ["ImageTimmConfig", "ImagePreprocessingOverrides"]


class ImageTimmConfig(ImagePreprocessingOverrides):
    image_size: int | tuple[int, int] | Literal["native"] | None = Field(
        None,
        description="input size (square side or [height, width]); 'native': keep each image's own size "
        "(no resize, no crop; a batch of different sizes is zero-padded); default: the model's own",
    )
    mean: tuple[float, ...] | Literal["auto"] | None = Field(
        None, description="normalisation mean per channel; 'auto': computed on the training split"
    )
    std: tuple[float, ...] | Literal["auto"] | None = Field(
        None, description="normalisation std per channel; 'auto': computed on the training split"
    )
    channels: Literal[1, 3] = Field(
        3, description="1: grayscale input, no RGB copy (timm in_chans=1; pretrained first conv summed over RGB)"
    )
    augment: ImageAugmentConfig | None = Field(None, description="training-time augmentation (training split only)")
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
