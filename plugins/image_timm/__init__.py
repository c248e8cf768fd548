"""``mmfuse/image_timm``: any ``timm.create_model`` image backbone, with preprocessing resolved from
the model's own pretrained config (size, interpolation, mean/std, crop) and optional overrides."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl

__all__ = ["ImageTimmConfig", "ImagePreprocessingOverrides"]


class ImagePreprocessingOverrides(BaseModel):
    """Fields that replace what ``timm.data.resolve_data_config`` finds in the model's config."""

    model_config = ConfigDict(extra="forbid")

    image_size: int | tuple[int, int] | None = Field(
        None, description="input size (square side or [height, width]); default: the model's own"
    )
    mean: tuple[float, float, float] | None = Field(None, description="RGB normalisation mean")
    std: tuple[float, float, float] | None = Field(None, description="RGB normalisation std")
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_pct: float | None = Field(None, gt=0, le=1, description="resize to size/crop_pct, then centre-crop")


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
