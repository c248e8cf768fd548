"""Image loading (path, PIL image or array) and the timm eval transform, CPU only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from mmfuse.backbones.image_settings import build_image_transform
from mmfuse.contracts import Preprocessor, SampleError

__all__ = ["load_rgb_image", "ImagePreprocessor"]


def load_rgb_image(value: Any) -> Image.Image:
    """A path, PIL image or ``HxW`` / ``HxWxC`` array as an RGB PIL image (alpha composited on
    white, grayscale replicated). Raises SampleError naming the path when it is missing or corrupt."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray):
        image = _image_from_array(value)
    elif isinstance(value, (str, Path)):
        image = _open_image_file(Path(value))
    else:
        raise SampleError(f"expected an image path, PIL image or array, got {type(value).__name__}: {value!r:.80}")
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


class ImagePreprocessor(Preprocessor):
    """Path / PIL image / array -> ``{"pixels": Float[3, H, W]}``; collate stacks to ``[B, 3, H, W]``."""

    modality = "image"
    reads_files = True

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = dict(settings)
        self._transform = build_image_transform(self._settings)

    def __call__(self, value: Any) -> dict[str, Tensor]:
        return {"pixels": self._transform(load_rgb_image(value))}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        blank = torch.zeros(3, *self._settings["image_size"])
        return {"pixels": torch.stack([blank if item is None else item["pixels"] for item in items])}

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)
