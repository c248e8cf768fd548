"""Image loading (path, PIL image or array) and preprocessing, CPU only: timm's eval transform
(resize, centre crop) or the image's native size, 1 or 3 channels, normalisation with given or
learned (``auto``) statistics, and training-time augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from mmfuse.backbones.image_settings import build_image_transform
from mmfuse.contracts import Preprocessor, SampleError
from mmfuse.augment import ImageAugmentConfig

__all__ = [
    "load_rgb_image",
    "load_image",
    "build_unit_transform",
    "pixel_statistics",
    "ImagePreprocessor",
]

#: images whose statistics ``mean: auto`` / ``std: auto`` read at most (spread over the split)
STATISTICS_SAMPLES = 10_000
#: size of the blank image standing in for a batch with no image at native size
_BLANK_SIDE = 32


def load_rgb_image(value: Any) -> Image.Image:
    """A path, PIL image or ``HxW`` / ``HxWxC`` array as an RGB PIL image (alpha composited on
    white, grayscale replicated). Raises SampleError naming the path when it is missing or corrupt."""
    return load_image(value, channels=3)


def load_image(value: Any, channels: int = 3) -> Image.Image:
    """Like :func:`load_rgb_image`, as an RGB (``channels=3``) or grayscale (``channels=1``) image."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray):
        image = _image_from_array(value)
    elif isinstance(value, (str, Path)):
        image = _open_image_file(Path(value))
    else:
        raise SampleError(f"expected an image path, PIL image or array, got {type(value).__name__}: {value!r:.80}")
    if channels == 1:
        return image if image.mode == "L" else _to_rgb(image).convert("L")
    return _to_rgb(image)


def _open_image_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise SampleError(f"image file not found: {path}")
    try:
        with Image.open(path) as handle:
            handle.load()  # decode now so a truncated file fails here, not in the transform
            return handle.copy()
    except Image.DecompressionBombError as exc:  # not an OSError: it would escape as a crash
        raise SampleError(
            f"image {path} is too large to decode safely ({exc}); shrink it, or raise "
            f"PIL.Image.MAX_IMAGE_PIXELS if such images are expected"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"cannot read image {path}: corrupt or unsupported file ({exc})") from exc


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise SampleError(f"expected an image array of shape HxW or HxWx{{1,3,4}}, got {array.shape}")
    if array.dtype != np.uint8:
        # float arrays are taken as [0, 1] intensities
        array = np.clip(np.asarray(array, dtype=np.float32) * 255.0, 0, 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def build_unit_transform(settings: dict[str, Any]):
    """PIL image -> float ``[C, H, W]`` in [0, 1], before normalisation: timm's eval resize and
    crop when ``image_size`` is set, the image as it is when it is None (native size)."""
    if settings.get("image_size") is None:
        return _native_unit_tensor
    from torchvision import transforms

    steps = build_image_transform({**settings, "mean": [0.0] * 3, "std": [1.0] * 3}).transforms
    return transforms.Compose([step for step in steps if type(step).__name__ != "Normalize"])


def _native_unit_tensor(image: Image.Image) -> Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image).float().div_(255)


def pixel_statistics(images: Sequence[Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over every pixel of ``images`` (``[C, H, W]``
    each, any sizes), each pixel weighted equally; float64 sums."""
    channels = images[0].shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for image in images:
        flat = image.reshape(channels, -1).double()
        total += flat.sum(dim=1)
        squares += flat.square().sum(dim=1)
        count += flat.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


class ImagePreprocessor(Preprocessor):
    """Path / PIL image / array -> ``{"pixels": Float[C, H, W]}``; collate stacks to
    ``[B, C, H, W]``, padding native-size images of different sizes at the bottom and right with
    zeros (and adding ``pixel_mask`` [B, H, W], True on real pixels, when ``with_mask``).

    ``settings`` is shared with the encoder that built it: ``fit`` writes learned ``auto``
    statistics into it, so the encoder's ``export_assets`` pins them in the model folder."""

    modality = "image"
    reads_files = True

    def __init__(
        self, settings: dict[str, Any], augment: ImageAugmentConfig | None = None, *, with_mask: bool = False
    ) -> None:
        self._settings = settings
        self.augment_config = augment
        self.with_mask = with_mask
        self.channels = int(settings.get("channels", 3))
        self._build()

    def _build(self) -> None:
        self._unit = build_unit_transform(self._settings)
        self._augmenter = None
        if self.fitted:
            self._mean = torch.tensor(self._settings["mean"], dtype=torch.float32).view(-1, 1, 1)
            self._std = torch.tensor(self._settings["std"], dtype=torch.float32).view(-1, 1, 1)
            if self.augmentation_enabled:
                from mmfuse.augment.image import ImageAugmenter

                self._augmenter = ImageAugmenter(self.augment_config, self._settings["mean"], self._settings["std"])

    @property
    def fitted(self) -> bool:
        """False while ``mean`` or ``std`` is still ``auto`` (not learned yet)."""
        return self._settings["mean"] != "auto" and self._settings["std"] != "auto"

    @property
    def augmentation_enabled(self) -> bool:
        from mmfuse.augment.image import image_augment_active

        return image_augment_active(self.augment_config)

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if not self.fitted:
            raise RuntimeError(
                "image mean/std are 'auto' but were not learned yet: they are computed from the training "
                "split when `mmfuse train` prepares the run (Preprocessor.fit). Call fit(values) first, or "
                "set numbers (mean: [0.5], std: [0.25])."
            )
        pixels = self._unit(load_image(value, self.channels))
        return {"pixels": (pixels - self._mean) / self._std}

    def fit(self, values: Sequence[Any]) -> dict[str, Any]:
        """Learn ``mean`` / ``std`` where they are ``auto``: per-channel statistics of the training
        images after resizing (if any), before normalisation."""
        wanted = [key for key in ("mean", "std") if self._settings[key] == "auto"]
        if not wanted:
            return {}
        from mmfuse.data.fitting import evenly_spaced

        images = []
        for value in evenly_spaced(values, STATISTICS_SAMPLES):
            try:
                images.append(self._unit(load_image(value, self.channels)))
            except SampleError:
                continue  # the dataset reports unreadable files with their manifest line
        if not images:
            raise ValueError("mean/std: auto needs readable training images, but none could be read")
        mean, std = pixel_statistics(images)
        learned = {"mean": mean, "std": std}
        for key in wanted:
            self._settings[key] = learned[key]
        self._build()
        return {key: learned[key] for key in wanted}

    def augment(self, tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        if self._augmenter is None:
            return tensors
        return {**tensors, "pixels": self._augmenter(tensors["pixels"], generator)}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        present = [item["pixels"] for item in items if item is not None]
        if self._settings.get("image_size") is not None:
            height, width = self._settings["image_size"]
        elif present:
            height, width = max(p.shape[1] for p in present), max(p.shape[2] for p in present)
        else:
            height = width = _BLANK_SIDE
        full = (self.channels, height, width)
        if len(present) == len(items) and all(p.shape == full and p.dtype == torch.float32 for p in present):
            # every row present at the full size (always so with image_size): one stack, no padding
            pixels = torch.stack(present)
            mask = torch.ones(len(items), height, width, dtype=torch.bool)
            return {"pixels": pixels, "pixel_mask": mask} if self.with_mask else {"pixels": pixels}
        pixels = torch.zeros(len(items), self.channels, height, width)
        mask = torch.zeros(len(items), height, width, dtype=torch.bool)
        for index, item in enumerate(items):
            if item is None:
                mask[index] = True  # a missing image is a blank full-size one; presence masks it
                continue
            _, h, w = item["pixels"].shape
            pixels[index, :, :h, :w] = item["pixels"]
            mask[index, :h, :w] = True
        return {"pixels": pixels, "pixel_mask": mask} if self.with_mask else {"pixels": pixels}

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)
