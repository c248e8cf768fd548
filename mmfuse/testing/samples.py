"""Tiny raw sample values per modality (what a manifest row holds), for conformance runs.

Values have different sizes on purpose (sentences of different lengths, images of different
shapes, clips of different durations) so that collating them needs padding. Media files are
written (with :mod:`mmfuse.testing.media`) into a folder you give. Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmfuse.testing.media import write_audio, write_image, write_video

__all__ = ["SAMPLE_TEXTS", "MODALITIES", "sample_values", "component_samples", "component_targets"]

#: three sentences of different lengths, all lowercase ASCII words
SAMPLE_TEXTS = [
    "a cat sat on the mat",
    "the dog runs",
    "a small red bird sings in the green tree at night",
]

MODALITIES = ("text", "image", "audio", "video", "vector")

_IMAGE_SIZES = [(32, 32), (40, 28), (24, 36)]
_AUDIO_SECONDS = [0.25, 0.5, 0.375]
_VIDEO_FRAMES = [8, 6, 10]


def sample_values(modality: str, folder: str | Path | None = None, *, dim: int | None = None) -> list[Any]:
    """Three raw values of ``modality``: strings, or paths to PNG / WAV / MP4 files written into
    ``folder``, or numeric lists of length ``dim`` for ``"vector"``."""
    if modality == "text":
        return list(SAMPLE_TEXTS)
    if modality == "vector":
        if dim is None:
            raise ValueError("sample_values('vector') needs dim=<vector length>")
        rng = np.random.default_rng(0)
        return [rng.standard_normal(dim).round(4).tolist() for _ in range(3)]
    writers = {"image": _write_images, "audio": _write_audio, "video": _write_videos}
    if modality not in writers:
        raise ValueError(
            f"no built-in sample values for modality '{modality}' (known: {', '.join(MODALITIES)}). "
            f"Define conformance_samples(self, folder) -> list on the component's config class, "
            f"or pass samples=[...] to the check."
        )
    if folder is None:
        raise ValueError(f"sample_values('{modality}') writes files: pass folder=<a temporary folder>")
    target = Path(folder) / f"samples_{modality}"
    target.mkdir(parents=True, exist_ok=True)
    return [str(path) for path in writers[modality](target)]


def _write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    return [
        write_image(folder / f"image_{index}.png", rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        for index, (width, height) in enumerate(_IMAGE_SIZES)
    ]


def _write_audio(folder: Path, sample_rate: int = 16000) -> list[Path]:
    rng = np.random.default_rng(2)
    paths = []
    for index, seconds in enumerate(_AUDIO_SECONDS):
        time = np.arange(int(seconds * sample_rate)) / sample_rate
        wave = 0.5 * np.sin(2 * np.pi * (220.0 * (index + 1)) * time) + 0.01 * rng.standard_normal(time.shape)
        paths.append(write_audio(folder / f"audio_{index}.wav", wave, sample_rate))
    return paths


def _write_videos(folder: Path, size: int = 32) -> list[Path]:
    rng = np.random.default_rng(3)
    return [
        write_video(
            folder / f"video_{index}.mp4",
            [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(frames)],
            fps=8,
        )
        for index, frames in enumerate(_VIDEO_FRAMES)
    ]


def component_samples(config: Any, modality: str, folder: str | Path | None) -> list[Any]:
    """Sample raw inputs for an encoder: its config's ``conformance_samples(folder)`` hint when it
    defines one, else the built-in values of its modality."""
    hint = getattr(config, "conformance_samples", None)
    if callable(hint):
        return list(hint(Path(folder) if folder is not None else None))
    return sample_values(modality, folder, dim=getattr(config, "input_dim", None))


def component_targets(config: Any) -> list[Any] | None:
    """Sample raw targets for a task: its config's ``conformance_targets()`` hint, or a guess from
    its fields (labels for configs with ``fit_targets``, numbers otherwise); None for no guess."""
    hint = getattr(config, "conformance_targets", None)
    if callable(hint):
        return list(hint())
    labels = getattr(config, "labels", None)
    if labels:
        return [labels[i % len(labels)] for i in range(4)]
    if callable(getattr(config, "fit_targets", None)):
        return ["cat", "dog", "cat", "bird"]
    width = getattr(config, "output_dim", None)
    if isinstance(width, int) and width > 1:
        return [[0.5 * i - j for j in range(width)] for i in range(4)]
    return [0.5, -1.25, 2.0, 0.0]
