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
    height, width = (size, size) if isinstance(size, int) else (size or tuple(data["input_size"][1:]))
    return {
        "image_size": [int(height), int(width)],
        "interpolation": overrides.interpolation or data.get("interpolation", "bilinear"),
        "mean": [float(v) for v in (overrides.mean or data["mean"])][:3],
        "std": [float(v) for v in (overrides.std or data["std"])][:3],
        "crop_pct": float(overrides.crop_pct or data.get("crop_pct") or 1.0),
        "crop_mode": data.get("crop_mode") or "center",
    }


def build_image_transform(settings: dict[str, Any]):
    """timm's eval transform (resize, centre crop, to tensor, normalise) for plain settings."""
    from timm.data import create_transform

    height, width = settings["image_size"]
    return create_transform(
        input_size=(3, height, width),
        is_training=False,
        interpolation=settings["interpolation"],
        mean=tuple(settings["mean"]),
        std=tuple(settings["std"]),
        crop_pct=settings["crop_pct"],
        crop_mode=settings.get("crop_mode", "center"),
    )
