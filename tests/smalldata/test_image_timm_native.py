"""image_timm: ``image_size: native`` keeps a small image's size (no 32 -> 224 resize, no crop)
and ``channels: 1`` feeds grayscale to a timm backbone built with in_chans=1 (no RGB copy)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mmfuse.testing import check_encoder
from mmfuse.testing.media import write_image
from mmfuse_plugins.image_timm import ImageTimmConfig
from mmfuse_plugins.image_timm.encoder import build_image_encoder

CONFIG = {"model": "test_resnet", "pretrained": False, "image_size": "native", "channels": 1, "mean": [0.4], "std": [0.2]}


def test_native_grayscale_input_keeps_size_and_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 28), dtype=np.uint8)
    path = write_image(tmp_path / "g.png", pixels)
    encoder = build_image_encoder(ImageTimmConfig(**CONFIG))
    first_conv = next(m for m in encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 1
    item = encoder.preprocessor()(str(path))["pixels"]
    assert item.shape == (1, 20, 28)
    expected = (torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32)) / 255 - 0.4) / 0.2
    assert torch.allclose(item[0], expected, atol=1e-6)
    # an RGB file is converted to one luminance channel, not copied three times
    rgb = write_image(tmp_path / "c.png", np.stack([pixels] * 3, axis=-1))
    assert encoder.preprocessor()(str(rgb))["pixels"].shape == (1, 20, 28)


def test_native_size_is_kept_through_the_model_folder(tmp_path):
    rng = np.random.default_rng(1)
    samples = [str(write_image(tmp_path / f"{i}.png", rng.integers(0, 256, size=(24, 24), dtype=np.uint8))) for i in range(3)]
    check_encoder("mmfuse/image_timm", CONFIG, samples=samples, folder=tmp_path)
    encoder = build_image_encoder(ImageTimmConfig(**CONFIG))
    rebuilt = ImageTimmConfig(**{**CONFIG, **encoder.export_assets(str(tmp_path))})
    assert rebuilt.image_size == "native" and rebuilt.channels == 1


def test_default_size_still_resizes_rgb(tmp_path):
    path = write_image(tmp_path / "s.png", np.zeros((32, 32, 3), dtype=np.uint8))
    encoder = build_image_encoder(ImageTimmConfig(model="test_resnet", pretrained=False))
    height, width = encoder.preprocessor().settings()["image_size"]
    assert encoder.preprocessor()(str(path))["pixels"].shape == (3, height, width) and height != 32
