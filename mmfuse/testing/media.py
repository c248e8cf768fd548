"""Write small real media files (images, audio, video, corrupt files) for tests, samples and the
demo. Needs numpy, Pillow, soundfile and PyAV; imports no torch.

Two layers: ``write_image`` / ``write_audio`` / ``write_video`` encode arrays you computed into a
file; ``write_png`` / ``write_wav`` / ``write_mp4`` synthesise random content first. Every writer
takes the destination path first, creates its parent folders and returns the path (a
``pathlib.Path``); the format follows the file extension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = [
    "write_image",
    "write_audio",
    "write_video",
    "write_png",
    "write_wav",
    "write_mp4",
    "write_corrupt_file",
]


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_image(path: str | Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """Save ``pixels`` (uint8, [H, W] or [H, W, C]) with Pillow, converted to ``mode`` if given
    (``.png``, ``.jpg``... by extension)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    path = _prepare(path)
    image.save(path)
    return path


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int) -> Path:
    """Save ``wave`` ([samples] or [samples, channels], floats in [-1, 1]) with soundfile
    (``.wav``, ``.flac``, ``.ogg`` by extension)."""
    import soundfile

    path = _prepare(path)
    soundfile.write(str(path), np.asarray(wave, dtype=np.float32), sample_rate)
    return path


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int) -> Path:
    """Encode RGB ``frames`` (uint8 [H, W, 3], all one size) as H.264 (yuv420p) with PyAV."""
    import av

    path = _prepare(path)
    with av.open(str(path), mode="w") as container:
        stream = None
        for pixels in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = pixels.shape[:2]
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"write_video({path}): no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png(path: str | Path, size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0) -> Path:
    """A random image of ``size`` (width, height) in PIL ``mode`` ("RGB", "L", "RGBA", ...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    width, height = size
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return write_image(path, pixels[..., 0] if channels == 1 else pixels, mode)


def write_wav(
    path: str | Path,
    seconds: float = 0.5,
    sample_rate: int = 16000,
    channels: int = 1,
    frequency: float = 440.0,
    seed: int = 0,
) -> Path:
    """A sine tone plus a little noise, ``channels`` channels at ``sample_rate`` Hz."""
    rng = np.random.default_rng(seed)
    count = max(1, int(round(seconds * sample_rate)))
    time = np.arange(count, dtype=np.float64) / sample_rate
    tone = 0.5 * np.sin(2 * np.pi * frequency * time)
    wave = np.stack([tone * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    wave = wave + 0.01 * rng.standard_normal(wave.shape)
    return write_audio(path, wave if channels > 1 else wave[:, 0], sample_rate)


def write_mp4(
    path: str | Path,
    num_frames: int = 8,
    size: tuple[int, int] = (32, 32),
    fps: int = 8,
    seed: int = 0,
) -> Path:
    """``num_frames`` noisy frames of ``size`` (width, height) as H.264.

    Each frame has a distinct mean brightness (frame i is brighter than frame i-1), so tests can
    tell which frames a sampler picked."""
    rng = np.random.default_rng(seed)
    width, height = size
    frames = []
    for index in range(num_frames):
        base = int(20 + 200 * index / max(1, num_frames - 1))
        noise = rng.integers(-10, 11, size=(height, width, 3))
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return write_video(path, frames, fps)


def write_corrupt_file(path: str | Path, content: bytes = b"this is not a media file\x00\x01\x02") -> Path:
    """A file with a media extension whose bytes are garbage (for corrupt-file error tests)."""
    path = _prepare(path)
    path.write_bytes(content)
    return path
