"""Image preprocessing settings shared by the image and video encoders: the recipe's overrides (a
config class, torch-free), resolved against a timm model's own data config into plain data, and
the eval transform (resize, centre crop, normalise) those settings give. timm is imported only
when a function needs it, so config modules can import this one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ImagePreprocessingOverrides", "resolve_image_settings", "build_image_transform"]


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


def resolve_image_settings(model: Any, overrides: ImagePreprocessingOverrides) -> dict[str, Any]:
    """The model's own data config (``timm.data.resolve_data_config``) with the recipe's overrides,
    as plain data (what :func:`build_image_transform` and the image preprocessors take)."""
    from timm.data import resolve_data_config

    data = resolve_data_config({}, model=model)
    size = overrides.image_size
    channels = int(getattr(overrides, "channels", 3))
    if size == "native":
        image_size = None  # each image keeps its own size: no resize, no crop
    else:
        height, width = (size, size) if isinstance(size, int) else (size or tuple(data["input_size"][1:]))
        image_size = [int(height), int(width)]
    return {
        "image_size": image_size,
        "interpolation": overrides.interpolation or data.get("interpolation", "bilinear"),
        "mean": _channel_values(overrides.mean or data["mean"], channels),
        "std": _channel_values(overrides.std or data["std"], channels),
        "crop_pct": float(overrides.crop_pct or data.get("crop_pct") or 1.0),
        "crop_mode": data.get("crop_mode") or "center",
        "channels": channels,
    }


def _channel_values(values: Any, channels: int) -> Any:
    """Per-channel statistics for ``channels`` channels ('auto' stays: learned from the data); RGB
    statistics are averaged for a grayscale input."""
    if values == "auto":
        return "auto"
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values[:3]) / len(values[:3])]
    if len(values) == 1:
        return values * channels
    return values[:channels]


def build_image_transform(settings: dict[str, Any]):
    """timm's eval transform (resize, centre crop, to tensor, normalise) for plain settings."""
    from timm.data import create_transform

    height, width = settings["image_size"]
    return create_transform(
        input_size=(int(settings.get("channels", 3)), height, width),
        is_training=False,
        interpolation=settings["interpolation"],
        mean=tuple(settings["mean"]),
        std=tuple(settings["std"]),
        crop_pct=settings["crop_pct"],
        crop_mode=settings.get("crop_mode", "center"),
    )
