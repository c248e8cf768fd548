"""The preprocessor of spectrogram encoders (``audio_mel``, ``audio_cnn``): waveforms padded to
``max_seconds``, waveform augmentation, and ``mel_mean`` / ``mel_std: auto`` learned from the
training clips. The spectrogram itself is computed in the encoder (on the model's device); the
statistics reach it through a dict shared with the encoder's :class:`LogMelSpectrogram`."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mmfuse.preprocessing.waveform import WaveformPreprocessor
from mmfuse.augment import AudioAugmentConfig

__all__ = ["LogMelSpectrogram", "MelWaveformPreprocessor", "log_mel_statistics", "STATISTICS_SAMPLES"]

#: clips that ``mel_mean`` / ``mel_std: auto`` read at most (spread over the training split)
STATISTICS_SAMPLES = 5_000
_FLOOR = 1e-6


def _mel_transform(config: Any) -> nn.Module:
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels
    )


class LogMelSpectrogram(nn.Module):
    """Waveform ``[B, T]`` -> standardised log-mel ``[B, 1, n_mels, frames]``.

    ``statistics`` (``{"mel_mean", "mel_std"}``, plain floats or ``"auto"`` until learned) is a
    dict shared with the preprocessor, whose ``fit`` fills in ``auto`` values."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.mel = _mel_transform(config)
        self.hop_length = config.hop_length
        self.statistics: dict[str, Any] = {"mel_mean": config.mel_mean, "mel_std": config.mel_std}

    def forward(self, waveform: Tensor) -> Tensor:
        mean, std = self.statistics["mel_mean"], self.statistics["mel_std"]
        if mean == "auto" or std == "auto":
            raise RuntimeError(
                "mel_mean/mel_std are 'auto' but were not learned yet: they are computed from the training "
                "split when `mmfuse train` prepares the run (Preprocessor.fit). Set numbers to use the "
                "encoder on its own."
            )
        # the STFT runs in float32 even under autocast: bf16 mel energies lose the quiet bands
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            mel = self.mel(waveform.float())
        return ((torch.log(mel + _FLOOR) - mean) / std).unsqueeze(1)

    def frame_counts(self, sample_counts: Tensor) -> Tensor:
        """Spectrogram frames computed from real samples (centre-padded STFT)."""
        return sample_counts // self.hop_length + 1

    def fill_value(self) -> float:
        """The standardised value of silence (what SpecAugment masks are filled with)."""
        return (math.log(_FLOOR) - float(self.statistics["mel_mean"])) / float(self.statistics["mel_std"])


def log_mel_statistics(waveforms: Sequence[Tensor], mel: nn.Module, hop_length: int) -> tuple[float, float]:
    """Mean and standard deviation of ``log(mel + 1e-6)`` over every (mel bin, frame) of the real
    frames of ``waveforms`` (``[T]`` each, unpadded), each value weighted equally; float64 sums."""
    total = squares = 0.0
    count = 0
    with torch.no_grad():
        for waveform in waveforms:
            values = torch.log(mel(waveform.float()) + _FLOOR)[:, : waveform.shape[0] // hop_length + 1].double()
            total += float(values.sum())
            squares += float(values.square().sum())
            count += values.numel()
    mean = total / count
    return round(mean, 6), round(max(math.sqrt(max(squares / count - mean * mean, 0.0)), 1e-6), 6)


class MelWaveformPreprocessor(WaveformPreprocessor):
    """Waveforms padded to ``max_seconds`` (a clip's features never depend on its batch), with
    waveform augmentation and the learning of ``auto`` log-mel statistics."""

    def __init__(self, config: Any, statistics: dict[str, Any], augment: AudioAugmentConfig | None = None) -> None:
        super().__init__(config.sample_rate, config.max_seconds, pad_to_max=True)
        self.config = config
        self.statistics = statistics
        self.augment_config = augment

    @property
    def augmentation_enabled(self) -> bool:
        from mmfuse.augment.audio import waveform_augment_active

        return waveform_augment_active(self.augment_config)

    def fit(self, values: Sequence[Any]) -> dict[str, Any]:
        wanted = [key for key in ("mel_mean", "mel_std") if self.statistics[key] == "auto"]
        if not wanted:
            return {}
        from mmfuse.data.fitting import evenly_spaced, readable_items

        clips = [item["waveform"] for item in readable_items(self, evenly_spaced(values, STATISTICS_SAMPLES))]
        if not clips:
            raise ValueError("mel_mean/mel_std: auto needs readable training clips, but none could be read")
        mean, std = log_mel_statistics(clips, _mel_transform(self.config), self.config.hop_length)
        learned = {"mel_mean": mean, "mel_std": std}
        for key in wanted:
            self.statistics[key] = learned[key]
        return {key: learned[key] for key in wanted}

    def augment(self, tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        if not self.augmentation_enabled:
            return tensors
        from mmfuse.augment.audio import augment_waveform

        return {**tensors, "waveform": augment_waveform(tensors["waveform"], self.augment_config, self.sample_rate, generator)}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), **{k: v for k, v in self.statistics.items()}}
