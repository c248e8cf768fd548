"""Image (and per-clip video) augmentation with torchvision.transforms.v2, on preprocessed pixels."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mmfuse.data.augmentation import seeded_global_rng
from mmfuse.augment import ImageAugmentConfig, VideoAugmentConfig

__all__ = ["image_augment_active", "ImageAugmenter", "jitter_frame_order"]


def image_augment_active(config: ImageAugmentConfig | None) -> bool:
    """True when at least one step of ``config`` changes images."""
    if config is None:
        return False
    jitter = (config.brightness, config.contrast, config.saturation, config.hue)
    return bool(
        config.crop_scale is not None or config.hflip or config.vflip or config.rotation or any(jitter)
        or config.rand_augment
    )


class ImageAugmenter:
    """Applies ``config`` to normalised pixels ``[C, H, W]`` or a clip ``[T, C, H, W]`` (one set
    of random parameters per call): un-normalise to [0, 1], transform, normalise again."""

    def __init__(self, config: ImageAugmentConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        self.config = config
        self.mean = torch.tensor([float(v) for v in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(v) for v in std]).view(-1, 1, 1)
        self._transform = None  # built lazily: the size is the image's own

    def _build(self, size: tuple[int, int], channels: int):
        from torchvision.transforms import v2

        c = self.config
        steps = []
        if c.crop_scale is not None:
            steps.append(v2.RandomResizedCrop(size, scale=tuple(c.crop_scale), ratio=tuple(c.crop_ratio), antialias=True))
        if c.hflip:
            steps.append(v2.RandomHorizontalFlip(c.hflip))
        if c.vflip:
            steps.append(v2.RandomVerticalFlip(c.vflip))
        if c.rotation:
            steps.append(v2.RandomRotation(c.rotation))
        colour = channels == 3
        if c.brightness or c.contrast or (colour and (c.saturation or c.hue)):
            steps.append(
                v2.ColorJitter(
                    brightness=c.brightness or None,
                    contrast=c.contrast or None,
                    saturation=(c.saturation or None) if colour else None,
                    hue=(c.hue or None) if colour else None,
                )
            )
        return v2.Compose(steps)

    def __call__(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        size, channels = tuple(pixels.shape[-2:]), pixels.shape[-3]
        unit = (pixels * self.std + self.mean).clamp(0.0, 1.0)
        with seeded_global_rng(generator):
            out = self._build(size, channels)(unit)
            if self.config.rand_augment:
                from torchvision.transforms import v2

                # RandAugment's posterize / equalize need uint8 images
                as_bytes = (out * 255).round().to(torch.uint8)
                rand = v2.RandAugment(self.config.rand_augment_ops, self.config.rand_augment_magnitude)
                out = rand(as_bytes).float() / 255
        return ((out - self.mean) / self.std).to(pixels.dtype)


def jitter_frame_order(count: int, config: VideoAugmentConfig, generator: torch.Generator) -> Tensor:
    """Indices of ``count`` frames, each moved by up to ``temporal_jitter`` positions, kept in order."""
    base = torch.arange(count)
    if not config.temporal_jitter or count < 2:
        return base
    shift = torch.randint(-config.temporal_jitter, config.temporal_jitter + 1, (count,), generator=generator)
    return (base + shift).clamp(0, count - 1).sort().values
