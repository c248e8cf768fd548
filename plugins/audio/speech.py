"""Torch side of ``mmfuse/audio_speech``: a transformers speech model (wav2vec2, HuBERT, WavLM...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.backbones.hf import hf_layer_groups, load_hf_model, pool_tokens, set_hf_grad_checkpointing
from mmfuse.contracts import Encoder, EncoderOutput
from mmfuse_plugins.audio import AudioSpeechConfig
from mmfuse.preprocessing.waveform import WaveformPreprocessor

__all__ = ["SpeechEncoder", "build_speech_encoder"]

DEFAULT_SAMPLE_RATE = 16000


class SpeechEncoder(Encoder):
    """Frame features of the speech model with their mask; pooled over the real frames."""

    modality = "audio"

    def __init__(self, config: AudioSpeechConfig, model: nn.Module, feature_extractor: Any | None) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.feature_extractor = feature_extractor
        self.output_dim = int(model.config.hidden_size)
        self.sample_rate = config.sample_rate or int(getattr(feature_extractor, "sampling_rate", DEFAULT_SAMPLE_RATE))
        normalize = config.normalize
        self.normalize = bool(getattr(feature_extractor, "do_normalize", False)) if normalize is None else normalize
        # group-norm feature encoders (wav2vec2-base) were trained on zero-padded batches without an
        # attention mask; transformers documents that passing one to them degrades the features
        self.uses_attention_mask = getattr(model.config, "feat_extract_norm", "layer") != "group"

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        waveform, sample_mask = inputs["waveform"], inputs["attention_mask"]
        attention_mask = sample_mask if self.uses_attention_mask else None
        tokens = self.model(input_values=waveform, attention_mask=attention_mask).last_hidden_state
        mask = self._frame_mask(sample_mask.sum(dim=1), tokens.shape[1])
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pool_tokens(tokens, mask, self.config.pooling))

    def _frame_mask(self, sample_counts: Tensor, frames: int) -> Tensor:
        lengths_of = getattr(self.model, "_get_feat_extract_output_lengths", None)
        steps = torch.arange(frames, device=sample_counts.device)
        if lengths_of is None:
            return torch.ones(sample_counts.shape[0], frames, dtype=torch.bool, device=sample_counts.device)
        real = lengths_of(sample_counts).clamp(1, frames)
        return steps.unsqueeze(0) < real.unsqueeze(1)

    def preprocessor(self) -> WaveformPreprocessor:
        return WaveformPreprocessor(self.sample_rate, self.config.max_seconds, normalize=self.normalize)

    def layer_groups(self) -> list[nn.Module]:
        return hf_layer_groups(self.model)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)

    def export_assets(self, folder: str) -> dict[str, Any]:
        target = Path(folder).resolve()
        self.model.config.save_pretrained(target)
        if self.feature_extractor is not None:
            self.feature_extractor.save_pretrained(target)
        return {"model": str(target), "pretrained": False, "sample_rate": self.sample_rate, "normalize": self.normalize}


def build_speech_encoder(config: AudioSpeechConfig) -> SpeechEncoder:
    from transformers import AutoFeatureExtractor

    model = load_hf_model(config.model, pretrained=config.pretrained)
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(config.model)
    except (OSError, ValueError):
        # a bare model folder without preprocessor_config.json: the config's rate/normalize or defaults apply
        feature_extractor = None
    return SpeechEncoder(config, model, feature_extractor)
