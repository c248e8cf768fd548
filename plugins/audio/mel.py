"""Torch side of ``mmfuse/audio_mel``: log-mel spectrogram (torchaudio) + a timm backbone."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.backbones.timm_models import create_timm_backbone, timm_layer_groups, timm_rebuild_args
from mmfuse.contracts import Encoder, EncoderOutput, masked_mean
from mmfuse_plugins.audio import AudioMelConfig
from mmfuse.preprocessing.mel import LogMelSpectrogram, MelWaveformPreprocessor
from mmfuse.augment.audio import SpecAugment

__all__ = ["LogMelSpectrogram", "MelEncoder", "build_mel_encoder"]  # LogMelSpectrogram: re-exported


class MelEncoder(Encoder):
    """Tokens are the backbone's time steps (frequency averaged out) for CNN backbones, or its
    tokens for ViT-style ones; pooled is the mean over the time steps holding real audio."""

    modality = "audio"

    def __init__(self, config: AudioMelConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.spectrogram = LogMelSpectrogram(config)
        self.spec_augment = SpecAugment(config.augment)  # training mode only
        self.backbone = backbone
        self.output_dim = int(backbone.num_features)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        waveform, sample_mask = inputs["waveform"], inputs["attention_mask"]
        spectrogram = self.spectrogram(waveform)
        spectrogram = self.spec_augment(spectrogram, self.spectrogram.fill_value() if self.spec_augment.active else 0.0)
        features = self.backbone.forward_features(spectrogram)
        if features.ndim == 4:  # [B, C, freq, time]
            tokens = features.mean(dim=2).transpose(1, 2)
            real_frames = self.spectrogram.frame_counts(sample_mask.sum(dim=1))
            real_steps = torch.ceil(real_frames * tokens.shape[1] / spectrogram.shape[-1]).clamp(1, tokens.shape[1])
            steps = torch.arange(tokens.shape[1], device=tokens.device)
            mask = steps.unsqueeze(0) < real_steps.unsqueeze(1)
            pooled = masked_mean(tokens, mask)
        else:  # [B, N, D] patch tokens: no time axis to mask
            tokens = features
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
            pooled = self.backbone.forward_head(features, pre_logits=True)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def preprocessor(self) -> MelWaveformPreprocessor:
        # every clip is padded to max_seconds, so a clip's features never depend on its batch;
        # the statistics dict is shared: mel_mean/mel_std learned by the preprocessor land here
        return MelWaveformPreprocessor(self.config, self.spectrogram.statistics, self.config.augment)

    def layer_groups(self) -> list[nn.Module]:
        return timm_layer_groups(self.backbone)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def export_assets(self, folder: str) -> dict[str, Any]:
        return {**timm_rebuild_args(self.backbone, self.config.model_kwargs), **self.spectrogram.statistics}


def build_mel_encoder(config: AudioMelConfig) -> MelEncoder:
    backbone = create_timm_backbone(
        config.model,
        pretrained=config.pretrained,
        checkpoint=config.checkpoint,
        model_kwargs=config.model_kwargs,
        in_chans=1,
    )
    return MelEncoder(config, backbone)
