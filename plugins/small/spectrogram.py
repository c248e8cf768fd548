"""Torch side of ``mmfuse/audio_cnn``: log-mel spectrogram (torchaudio) through a masked conv
stack trained from scratch; time steps are the tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput
from mmfuse.preprocessing.mel import LogMelSpectrogram, MelWaveformPreprocessor
from mmfuse.augment.audio import SpecAugment
from mmfuse_plugins.small import AudioCNNConfig
from mmfuse_plugins.small.conv import MaskedConvStack, masked_global_pool

__all__ = ["AudioCNNEncoder", "build_audio_cnn"]


class AudioCNNEncoder(Encoder):
    """Spectrogram ``[B, 1, n_mels, frames]`` -> conv stack -> mean over frequency -> tokens
    ``[B, time steps, widths[-1]]``; frames past a clip's end are masked at every block."""

    modality = "audio"

    def __init__(self, config: AudioCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.spectrogram = LogMelSpectrogram(config)
        self.spec_augment = SpecAugment(config.augment)  # training mode only
        self.stack = MaskedConvStack(1, config)
        self.output_dim = self.stack.output_dim

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        waveform, sample_mask = inputs["waveform"], inputs["attention_mask"]
        spectrogram = self.spectrogram(waveform)
        if self.spec_augment.active:
            spectrogram = self.spec_augment(spectrogram, self.spectrogram.fill_value())
        frames = spectrogram.shape[-1]
        real = self.spectrogram.frame_counts(sample_mask.sum(dim=1)).clamp(1, frames)
        time_mask = torch.arange(frames, device=waveform.device).unsqueeze(0) < real.unsqueeze(1)
        mask = time_mask.unsqueeze(1).expand(-1, spectrogram.shape[2], -1)
        features, feature_mask = self.stack(spectrogram, mask)
        tokens = features.mean(dim=2).transpose(1, 2)  # frequency averaged out
        token_mask = feature_mask.any(dim=1)
        return EncoderOutput(tokens=tokens, mask=token_mask, pooled=masked_global_pool(tokens, token_mask, self.config.global_pooling))

    def preprocessor(self) -> MelWaveformPreprocessor:
        # the statistics dict is shared: mel_mean/mel_std learned by the preprocessor land here
        return MelWaveformPreprocessor(self.config, self.spectrogram.statistics, self.config.augment)

    def layer_groups(self) -> list[nn.Module]:
        return list(self.stack.blocks)

    def export_assets(self, folder: str) -> dict[str, Any]:
        return dict(self.spectrogram.statistics)


def build_audio_cnn(config: AudioCNNConfig) -> AudioCNNEncoder:
    return AudioCNNEncoder(config)
