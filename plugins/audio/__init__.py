"""Audio encoders: ``mmfuse/audio_mel`` (log-mel spectrogram + a timm CNN/ViT backbone) and
``mmfuse/audio_speech`` (a transformers speech model such as wav2vec2 / HuBERT, by hub name or
local folder). Both read wav/flac/ogg with soundfile, mix down to mono, resample to the model's
rate and crop to ``max_seconds``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl
from mmfuse.augment import AudioAugmentConfig

__all__ = ["AudioMelConfig", "AudioSpeechConfig"]


class AudioMelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="timm backbone applied to the spectrogram ('efficientnet_b0', 'resnet18')")
    pretrained: bool = Field(False, description="start from the backbone's ImageNet weights")
    checkpoint: str | None = Field(None, description="local timm checkpoint file to load")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")
    sample_rate: int = Field(16000, gt=0, description="audio is resampled to this rate (Hz)")
    max_seconds: float = Field(10.0, gt=0, description="clips are cropped to, and padded up to, this duration")
    n_mels: int = Field(64, gt=0)
    n_fft: int = Field(400, gt=0)
    hop_length: int = Field(160, gt=0)
    mel_mean: float | Literal["auto"] = Field(
        0.0, description="log-mel values are standardised as (x - mel_mean) / mel_std; 'auto': from the training split"
    )
    mel_std: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(1.0, description="'auto': from the training split")
    augment: AudioAugmentConfig | None = Field(
        None, description="training-time augmentation: waveform gain / shift / noise, SpecAugment masks"
    )


class AudioSpeechConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ..., description="transformers speech model: hub name ('facebook/wav2vec2-base') or local folder"
    )
    pretrained: bool = Field(True, description="load pretrained weights; false builds from the config only")
    sample_rate: int | None = Field(None, gt=0, description="default: the model's feature extractor rate, else 16000")
    normalize: bool | None = Field(
        None, description="zero-mean unit-variance per clip; default: the model's feature extractor setting"
    )
    max_seconds: float = Field(20.0, gt=0, description="clips are cropped to this duration")
    pooling: Literal["mean", "max"] = Field("mean", description="how frame features become one vector")


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "mmfuse/audio_mel",
        builder="mmfuse_plugins.audio.mel:build_mel_encoder",
        config=AudioMelConfig,
        description="audio file -> log-mel spectrogram -> timm backbone (time tokens + pooled vector)",
        aliases=("audio",),
    )
    register(
        "mmfuse/audio_speech",
        builder="mmfuse_plugins.audio.speech:build_speech_encoder",
        config=AudioSpeechConfig,
        description="audio file -> transformers speech model (wav2vec2, HuBERT...) frame features",
        aliases=("speech",),
    )
