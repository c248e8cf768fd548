"""Decoding N frames of a video file (PyAV, or torchcodec), and the video preprocessor (CPU, in
workers). Both decoders pick, for each sampling timestamp, the frame nearest to it (ties to the
earlier frame)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmfuse.backbones.image_settings import build_image_transform
from mmfuse.contracts import Preprocessor, SampleError
from mmfuse.augment import VideoAugmentConfig

__all__ = ["target_times", "decode_video_frames", "decode_with_torchcodec", "VideoDecoderUnavailable", "VideoPreprocessor"]


#: two frame times closer than this to a sampling timestamp count as a tie
_TIE_SECONDS = 1e-6


class VideoDecoderUnavailable(RuntimeError):
    """The configured decoder cannot run on this machine (not a bad sample: every video would fail)."""


def target_times(duration: float, num_frames: int, sampling: str, fps: float | None) -> list[float]:
    """Timestamps (seconds) to sample: segment centres (uniform) or every 1/fps seconds (fps)."""
    if sampling == "uniform":
        return [(index + 0.5) * duration / num_frames for index in range(num_frames)]
    step = 1.0 / float(fps or 1.0)
    times = [index * step for index in range(num_frames) if index * step < duration]
    return times or [0.0]


def decode_video_frames(path: Path, num_frames: int, sampling: str, fps: float | None) -> list[Image.Image]:
    """The frames nearest to the sampling timestamps, as RGB PIL images (repeats allowed when the
    clip has fewer frames than asked for uniformly). Raises SampleError naming the file."""
    import av

    if not path.is_file():
        raise SampleError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SampleError(f"{path} has no video stream")
            stream = container.streams.video[0]
            duration = _duration_seconds(container, stream)
            if duration is None:  # no duration in the header: count by decoding once
                duration = max((f.time or 0.0) for f in container.decode(stream)) + _frame_interval(stream)
                container.seek(0)
            targets = target_times(duration, num_frames, sampling, fps)
            frames = _pick_frames(container.decode(stream), targets, _frame_interval(stream))
    except SampleError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise SampleError(f"cannot decode video {path}: corrupt or unsupported file ({exc})") from exc
    if not frames:
        raise SampleError(f"cannot decode video {path}: no frames could be decoded")
    return frames


def decode_with_torchcodec(path: Path, num_frames: int, sampling: str, fps: float | None) -> list[Image.Image]:
    """Like :func:`decode_video_frames`, through torchcodec's ``VideoDecoder`` (exact seek mode):
    the frame nearest to each sampling timestamp, as RGB PIL images."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as exc:
        raise VideoDecoderUnavailable(
            "decoder: torchcodec needs the torchcodec package (pip install torchcodec) and FFmpeg's shared "
            "libraries; or set decoder: pyav"
        ) from exc
    if not path.is_file():
        raise SampleError(f"video file not found: {path}")
    try:
        decoder = VideoDecoder(str(path), seek_mode="exact")
    except RuntimeError as exc:
        if "FFmpeg" in str(exc) or "libtorchcodec" in str(exc):
            raise VideoDecoderUnavailable(
                "decoder: torchcodec could not load FFmpeg's shared libraries (install FFmpeg 4-7, e.g. "
                f"apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 "
                f"libavfilter8), or set decoder: pyav ({str(exc).splitlines()[0]})"
            ) from exc
        raise SampleError(f"cannot decode video {path}: corrupt or unsupported file ({str(exc).splitlines()[0]})") from exc
    except ValueError as exc:
        raise SampleError(f"cannot decode video {path}: corrupt or unsupported file ({exc})") from exc
    meta = decoder.metadata
    count = int(meta.num_frames or 0)
    rate = float(meta.average_fps or 0) or 25.0
    if count == 0:
        raise SampleError(f"cannot decode video {path}: no frames could be decoded")
    start = float(meta.begin_stream_seconds or 0.0)
    duration = float(meta.duration_seconds or count / rate)
    indices = []
    for target in target_times(duration, num_frames, sampling, fps):
        position = (target - start) * rate
        nearest = int(np.ceil(position - 0.5 - _TIE_SECONDS * rate))  # ties to the earlier frame, as with PyAV
        indices.append(min(max(nearest, 0), count - 1))
    try:
        frames = decoder.get_frames_at(indices).data  # uint8 [N, 3, H, W]
    except (RuntimeError, IndexError, ValueError) as exc:
        raise SampleError(f"cannot decode video {path}: corrupt or unsupported file ({str(exc).splitlines()[0]})") from exc
    return [Image.fromarray(frame.permute(1, 2, 0).contiguous().numpy()) for frame in frames]


def _duration_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _frame_interval(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.04


def _pick_frames(decoded: Any, targets: list[float], interval: float) -> list[Image.Image]:
    """One pass over the decoded frames, converting only the picked ones to images."""
    picked: list[Image.Image] = []
    previous: tuple[float, Any] | None = None
    pending = list(targets)
    for index, frame in enumerate(decoded):
        time = frame.time if frame.time is not None else index * interval
        while pending and pending[0] <= time:
            target = pending.pop(0)
            # ties go to the earlier frame, so N targets over N frames pick every frame once; the
            # tolerance keeps float noise in frame times (pts * time_base) from breaking a tie
            nearer_previous = previous is not None and target - previous[0] <= time - target + _TIE_SECONDS
            picked.append((previous[1] if nearer_previous else frame).to_image())
        if not pending:
            return picked
        previous = (time, frame)
    if previous is not None:  # targets past the last decoded frame take the last frame
        picked.extend(previous[1].to_image() for _ in pending)
    return picked


class VideoPreprocessor(Preprocessor):
    """Video path (or a ``[N, H, W, 3]`` uint8 array / list of PIL images) -> ``{"frames":
    Float[num_frames, 3, H, W], "frame_mask": Long[num_frames]}``; short clips are padded with
    zero frames (or copies of the last frame when ``pad_with_last``) masked 0."""

    modality = "video"
    reads_files = True

    def __init__(self, image_settings: dict[str, Any], num_frames: int, sampling: str, fps: float | None,
                 pad_with_last: bool = False, augment: VideoAugmentConfig | None = None, decoder: str = "pyav") -> None:
        self.image_settings = dict(image_settings)
        self.decoder = decoder
        self.augment_config = augment
        self.num_frames = num_frames
        self.sampling = sampling
        self.fps = fps
        self.pad_with_last = pad_with_last
        self._transform = build_image_transform(self.image_settings)

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if isinstance(value, (str, Path)):
            decode = decode_with_torchcodec if self.decoder == "torchcodec" else decode_video_frames
            images = decode(Path(value), self.num_frames, self.sampling, self.fps)
        elif isinstance(value, np.ndarray) and value.ndim == 4 and value.shape[-1] == 3:
            indices = np.linspace(0, value.shape[0] - 1, self.num_frames).round().astype(int)
            images = [Image.fromarray(np.asarray(value[i], dtype=np.uint8)) for i in indices]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Image.Image) for v in value):
            images = [v.convert("RGB") for v in value][: self.num_frames]
        else:
            raise SampleError(
                f"expected a video path, an [N, H, W, 3] array or a list of PIL images, got "
                f"{type(value).__name__}: {value!r:.80}"
            )
        frames = torch.stack([self._transform(image) for image in images])
        real = frames.shape[0]
        if real < self.num_frames:
            filler = frames[-1:] if self.pad_with_last else torch.zeros_like(frames[:1])
            frames = torch.cat([frames, filler.expand(self.num_frames - real, *frames.shape[1:])])
        mask = torch.zeros(self.num_frames, dtype=torch.long)
        mask[:real] = 1
        return {"frames": frames, "frame_mask": mask}

    @property
    def augmentation_enabled(self) -> bool:
        from mmfuse.augment.image import image_augment_active

        config = self.augment_config
        return config is not None and (bool(config.temporal_jitter) or image_augment_active(config))

    def augment(self, tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Temporal jitter of the real frames, then the image steps with one set of random
        parameters for the whole clip (padding frames stay as they are)."""
        if not self.augmentation_enabled:
            return tensors
        from mmfuse.augment.image import ImageAugmenter, image_augment_active, jitter_frame_order

        frames, real = tensors["frames"], int(tensors["frame_mask"].sum())
        clip = frames[:real][jitter_frame_order(real, self.augment_config, generator)]
        if image_augment_active(self.augment_config):
            augmenter = ImageAugmenter(self.augment_config, self.image_settings["mean"], self.image_settings["std"])
            clip = augmenter(clip, generator)
        return {**tensors, "frames": torch.cat([clip, frames[real:]])}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        # a missing clip is zero frames whose first frame counts as real, so masked pooling and
        # attention never see an all-padding row; the presence mask excludes it downstream
        blank_frames = torch.zeros(self.num_frames, 3, *self.image_settings["image_size"])
        blank_mask = torch.zeros(self.num_frames, dtype=torch.long)
        blank_mask[0] = 1
        rows = [{"frames": blank_frames, "frame_mask": blank_mask} if item is None else item for item in items]
        return {
            "frames": torch.stack([row["frames"] for row in rows]),
            "frame_mask": torch.stack([row["frame_mask"] for row in rows]),
        }

    def settings(self) -> dict[str, Any]:
        return {
            **self.image_settings,
            "num_frames": self.num_frames,
            "sampling": self.sampling,
            "fps": self.fps,
            "pad_with_last": self.pad_with_last,
        }
