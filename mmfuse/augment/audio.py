"""Audio augmentation: waveform steps (gain, time shift, noise) on preprocessed samples, and
SpecAugment masking of a batch of spectrograms (torchaudio) inside an encoder."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmfuse.augment import AudioAugmentConfig, SpecAugmentConfig

__all__ = ["waveform_augment_active", "augment_waveform", "SpecAugment"]


def waveform_augment_active(config: AudioAugmentConfig | None) -> bool:
    return config is not None and bool(config.gain_db or config.shift_seconds or config.noise_snr_db is not None)


def augment_waveform(waveform: Tensor, config: AudioAugmentConfig, sample_rate: int, generator: torch.Generator) -> Tensor:
    """Random gain (dB), circular time shift and white noise at a random SNR, for one clip ``[T]``."""
    out = waveform
    if config.gain_db:
        gain_db = (torch.rand((), generator=generator) * 2 - 1) * config.gain_db
        out = out * torch.pow(10.0, gain_db / 20)
    if config.shift_seconds:
        limit = int(config.shift_seconds * sample_rate)
        shift = int(torch.randint(-limit, limit + 1, (), generator=generator))
        out = torch.roll(out, shift)
    if config.noise_snr_db is not None:
        snr_db = config.noise_snr_db + 20 * torch.rand((), generator=generator)
        power = out.square().mean().clamp_min(1e-10)
        noise = torch.randn(out.shape, generator=generator) * torch.sqrt(power / torch.pow(10.0, snr_db / 10))
        out = out + noise
    return out.to(waveform.dtype)


class SpecAugment(nn.Module):
    """Time and frequency masks on ``[B, 1, n_mels, frames]`` in training mode (no-op in eval);
    each clip gets its own masks. Draws from torch's global RNG, which the engine seeds and
    restores on resume."""

    def __init__(self, config: SpecAugmentConfig | None) -> None:
        super().__init__()
        self.config = config or SpecAugmentConfig()

    @property
    def active(self) -> bool:
        return bool(self.config.time_masks or self.config.freq_masks)

    def forward(self, spectrogram: Tensor, fill: float = 0.0) -> Tensor:
        if not (self.training and self.active):
            return spectrogram
        import torchaudio.functional as F

        c = self.config
        out = spectrogram
        for _ in range(c.time_masks):
            width = min(c.time_mask_frames, max(1, math.floor(out.shape[-1] * 0.5)))
            out = F.mask_along_axis_iid(out, width, fill, axis=out.ndim - 1)
        for _ in range(c.freq_masks):
            out = F.mask_along_axis_iid(out, min(c.freq_mask_bins, out.shape[-2]), fill, axis=out.ndim - 2)
        return out
