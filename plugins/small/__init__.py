"""Small encoders trained from scratch, for small data sets and no hub: ``mmfuse/image_cnn`` and
``mmfuse/audio_cnn`` (a configurable conv stack over images at their native size or over log-mel
spectrograms), ``mmfuse/sequence`` (1D convolutions + an optional GRU over waveforms or numeric
sequences) and ``mmfuse/text_small`` (a word / character vocabulary learned from the training
split, embeddings + conv / GRU / small transformer). Imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse.hookspecs import hookimpl
from mmfuse.augment import AudioAugmentConfig, ImageAugmentConfig, TextAugmentConfig

__all__ = ["ConvStackConfig", "ImageCNNConfig", "AudioCNNConfig", "SequenceConfig", "TextSmallConfig"]

PositiveFloat = Annotated[float, Field(gt=0)]


class ConvStackConfig(BaseModel):
    """A stack of conv blocks: each block is ``convs_per_block`` x (conv, norm, ReLU), then a 2x2
    pooling; one block per entry of ``widths`` (so ``len(widths)`` is the depth)."""

    model_config = ConfigDict(extra="forbid")

    widths: list[Annotated[int, Field(gt=0)]] = Field([32, 64, 128], min_length=1, description="output channels of each block")
    kernel_size: int = Field(3, ge=1, description="odd conv kernel size")
    convs_per_block: int = Field(1, ge=1)
    pooling: Literal["max", "avg", "none"] = Field("max", description="2x2 pooling after each block")
    norm: Literal["batch", "none"] = "batch"
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the final features")
    global_pooling: Literal["mean", "max"] = Field("mean", description="how the feature map becomes one vector")

    @model_validator(mode="after")
    def _odd_kernel(self) -> "ConvStackConfig":
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size padding), got {self.kernel_size}")
        return self


class ImageCNNConfig(ConvStackConfig):
    channels: Literal[1, 3] = Field(3, description="1: grayscale input (no RGB copy); 3: RGB")
    image_size: int | tuple[int, int] | None = Field(
        None, description="resize every image to this size (no crop); default: keep each image's native size"
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, ...] | Literal["auto"] = Field(
        (0.5,), description="normalisation mean (one value, or one per channel); 'auto': from the training split"
    )
    std: tuple[PositiveFloat, ...] | Literal["auto"] = Field(
        (0.5,), description="normalisation std (one value, or one per channel); 'auto': from the training split"
    )
    augment: ImageAugmentConfig | None = Field(None, description="training-time augmentation (training split only)")

    @model_validator(mode="after")
    def _statistics_per_channel(self) -> "ImageCNNConfig":
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value != "auto" and len(value) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values (channels: {self.channels}), got {len(value)}")
        return self


class AudioCNNConfig(ConvStackConfig):
    sample_rate: int = Field(16000, gt=0, description="audio is resampled to this rate (Hz)")
    max_seconds: float = Field(10.0, gt=0, description="clips are cropped to, and padded up to, this duration")
    n_mels: int = Field(64, gt=0)
    n_fft: int = Field(400, gt=0)
    hop_length: int = Field(160, gt=0)
    mel_mean: float | Literal["auto"] = Field(
        0.0, description="log-mel values are standardised as (x - mel_mean) / mel_std; 'auto': from the training split"
    )
    mel_std: PositiveFloat | Literal["auto"] = Field(1.0, description="'auto': from the training split")
    augment: AudioAugmentConfig | None = Field(
        None, description="training-time augmentation: waveform gain / shift / noise, SpecAugment masks"
    )


class SequenceConfig(BaseModel):
    """Strided 1D convolutions (each halving-or-more the length), then an optional GRU."""

    model_config = ConfigDict(extra="forbid")

    input: Literal["audio", "array"] = Field(
        "audio", description="'audio': audio files / (array, rate) pairs; 'array': lists [T] or [T, C], or .npy files"
    )
    in_channels: int = Field(1, gt=0, description="'array' input: values per time step")
    sample_rate: int = Field(16000, gt=0, description="'audio': resampled to this rate (Hz)")
    max_seconds: float = Field(10.0, gt=0, description="'audio': clips are cropped to this duration")
    max_length: int = Field(4096, gt=0, description="'array': sequences are cropped to this many steps")
    normalize: bool = Field(True, description="'audio': zero-mean unit-variance per clip")
    widths: list[Annotated[int, Field(gt=0)]] = Field([32, 64, 64], min_length=1, description="channels of each conv layer")
    kernel_size: int = Field(9, ge=1, description="odd kernel size")
    stride: int = Field(4, ge=1, description="stride of each conv layer")
    recurrent: Literal["gru", "none"] = Field("gru", description="a GRU over the conv features")
    hidden_size: int = Field(64, gt=0, description="GRU width (per direction)")
    bidirectional: bool = True
    recurrent_layers: int = Field(1, ge=1)
    pooling: Literal["mean", "max"] = "mean"
    dropout: float = Field(0.0, ge=0, lt=1)
    augment: AudioAugmentConfig | None = Field(None, description="'audio': waveform gain / shift / noise (no SpecAugment)")

    @model_validator(mode="after")
    def _checks(self) -> "SequenceConfig":
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.augment is not None and (self.augment.time_masks or self.augment.freq_masks):
            raise ValueError("augment: SpecAugment masks need a spectrogram; mmfuse/sequence reads the waveform")
        return self

    def conformance_samples(self, folder: Path | None) -> list[Any]:
        """Raw values for the conformance kit: audio files, or sequences of different lengths."""
        from mmfuse.testing.samples import sample_values

        if self.input == "audio":
            return sample_values("audio", folder)
        return [[[0.1 * (t + c) for c in range(self.in_channels)] for t in range(length)] for length in (40, 25, 33)]


class TextSmallConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["word", "char"] = Field("word", description="tokens are words (and punctuation) or characters")
    lowercase: bool = True
    max_vocab: int = Field(
        10000, ge=3, description="embedding rows: the most frequent tokens of the training split (+ padding and unknown)"
    )
    min_count: int = Field(1, ge=1, description="tokens seen fewer times become the unknown token")
    max_length: int = Field(64, gt=0, description="tokens kept per text")
    embed_dim: int = Field(64, gt=0)
    architecture: Literal["conv", "gru", "transformer"] = "conv"
    hidden_size: int = Field(128, gt=0, description="conv channels / GRU width per direction / transformer width")
    layers: int = Field(1, ge=1)
    kernel_size: int = Field(3, ge=1, description="'conv': odd kernel size")
    heads: int = Field(4, ge=1, description="'transformer': attention heads")
    dropout: float = Field(0.1, ge=0, lt=1)
    pooling: Literal["mean", "max"] = "mean"
    vocabulary: list[str] | None = Field(None, description="a fixed vocabulary instead of one learned from the data")
    vocabulary_file: str | None = Field(
        None, description="a vocabulary saved with a model folder (vocab.json); written by export"
    )
    augment: TextAugmentConfig | None = Field(None, description="training-time token dropout (training split only)")

    @model_validator(mode="after")
    def _checks(self) -> "TextSmallConfig":
        if self.architecture == "conv" and self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.architecture == "transformer" and self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of heads ({self.heads})")
        if self.vocabulary is not None and self.vocabulary_file is not None:
            raise ValueError("give either vocabulary or vocabulary_file, not both")
        return self


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "mmfuse/image_cnn",
        builder="mmfuse_plugins.small.image:build_image_cnn",
        config=ImageCNNConfig,
        description="image at its native size (or resized) -> small conv stack trained from scratch",
    )
    register(
        "mmfuse/audio_cnn",
        builder="mmfuse_plugins.small.spectrogram:build_audio_cnn",
        config=AudioCNNConfig,
        description="audio -> log-mel spectrogram -> small conv stack trained from scratch",
    )
    register(
        "mmfuse/sequence",
        builder="mmfuse_plugins.small.sequence:build_sequence_encoder",
        config=SequenceConfig,
        description="waveform or numeric sequence -> strided 1D convs (+ GRU), trained from scratch",
    )
    register(
        "mmfuse/text_small",
        builder="mmfuse_plugins.small.text:build_text_small",
        config=TextSmallConfig,
        description="text -> vocabulary learned from the training split -> embeddings + conv / GRU / transformer",
    )
