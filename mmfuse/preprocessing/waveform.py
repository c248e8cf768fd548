"""Reading audio (file path or ``(array, sample_rate)``) as a mono waveform at a fixed rate, and
padding a batch of waveforms with an attention mask. CPU only; runs in DataLoader workers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mmfuse.contracts import Preprocessor, SampleError

__all__ = ["load_mono_waveform", "WaveformPreprocessor"]


def load_mono_waveform(value: Any, sample_rate: int, max_seconds: float | None = None) -> Tensor:
    """A mono float32 waveform ``[T]`` at ``sample_rate`` from a file path (wav/flac/ogg, read by
    soundfile) or an ``(array, rate)`` pair (array ``[T]`` or ``[T, channels]``).

    ``max_seconds``: read and resample only the first ``max_seconds`` (cropping after resampling
    lets a file that declares a tiny rate, e.g. 1 Hz, blow up to gigabytes first)."""
    if isinstance(value, (str, Path)):
        samples, rate = _read_audio_file(Path(value), max_seconds)
        where = str(value)
    elif isinstance(value, tuple) and len(value) == 2:
        samples, rate = np.asarray(value[0], dtype=np.float32), value[1]
        where = "in-memory audio"
    else:
        raise SampleError(
            f"expected an audio file path or an (array, sample_rate) pair, got {type(value).__name__}: {value!r:.80}"
        )
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise SampleError(f"{where}: sample rate must be a positive integer, got {rate!r}")
    if max_seconds is not None and isinstance(rate, (int, np.integer)) and rate > 0:
        samples = samples[: _frames_for(max_seconds, int(rate))]
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.ndim != 1 or samples.shape[0] == 0:
        raise SampleError(f"{where}: expected a non-empty [samples] or [samples, channels] array, got {samples.shape}")
    if not np.isfinite(samples).all():
        raise SampleError(f"{where}: audio contains NaN or infinite samples")
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if int(rate) != sample_rate:
        import torchaudio.functional

        waveform = torchaudio.functional.resample(waveform, int(rate), sample_rate)
    return waveform


def _frames_for(max_seconds: float, rate: int) -> int:
    """Input frames covering ``max_seconds`` at ``rate``, plus one for the resampler's edge."""
    return max(1, math.ceil(max_seconds * rate) + 1)


def _read_audio_file(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    import soundfile

    if not path.is_file():
        raise SampleError(f"audio file not found: {path}")
    try:
        frames = -1
        if max_seconds is not None:
            rate = soundfile.info(str(path)).samplerate
            frames = _frames_for(max_seconds, rate) if rate > 0 else -1
        samples, rate = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise SampleError(f"cannot read audio {path}: corrupt or unsupported file ({exc})") from exc
    return samples, rate


class WaveformPreprocessor(Preprocessor):
    """Audio -> ``{"waveform": Float[T]}`` (mono, resampled, cropped to ``max_seconds``); collate
    pads to the longest clip (or to ``max_seconds`` when ``pad_to_max``) and returns
    ``attention_mask`` (Long[B, T], 1 for real samples)."""

    modality = "audio"
    reads_files = True

    def __init__(self, sample_rate: int, max_seconds: float, pad_to_max: bool = False, normalize: bool = False) -> None:
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.pad_to_max = pad_to_max
        self.normalize = normalize
        self.max_samples = max(1, int(round(max_seconds * sample_rate)))

    def __call__(self, value: Any) -> dict[str, Tensor]:
        waveform = load_mono_waveform(value, self.sample_rate, self.max_seconds)[: self.max_samples]
        if self.normalize:
            waveform = (waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-7)
        return {"waveform": waveform}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        lengths = [item["waveform"].shape[0] for item in items if item is not None]
        length = self.max_samples if self.pad_to_max or not lengths else max(lengths)
        if len(lengths) == len(items) and all(count == length for count in lengths):
            # every clip present at the full length: one stack, no padding
            waveform = torch.stack([item["waveform"] for item in items]).float()  # type: ignore[index]
            return {"waveform": waveform, "attention_mask": torch.ones(len(items), length, dtype=torch.long)}
        waveform = torch.zeros(len(items), length)
        # a missing clip is a full row of silence counted as real, so no model ever sees an
        # all-padding row; the presence mask excludes it downstream
        mask = torch.ones(len(items), length, dtype=torch.long)
        for index, item in enumerate(items):
            if item is None:
                continue
            count = item["waveform"].shape[0]
            waveform[index, :count] = item["waveform"]
            mask[index, count:] = 0
        return {"waveform": waveform, "attention_mask": mask}

    def settings(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "max_seconds": self.max_seconds,
            "pad_to_max": self.pad_to_max,
            "normalize": self.normalize,
        }
