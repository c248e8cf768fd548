"""Training-time augmentation settings shared by the built-in encoders (images, audio, video,
text). Imports no torch: these pydantic models are part of the recipe schema. The transforms live
next to them (``image``, ``audio``, ``text``) and run through the ``Preprocessor.augment`` contract
(training split only, after the deterministic preprocessing, seeded per sample)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ImageAugmentConfig", "VideoAugmentConfig", "AudioAugmentConfig", "SpecAugmentConfig", "TextAugmentConfig"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageAugmentConfig(_Section):
    """torchvision.transforms.v2 steps, in this order: random resized crop (back to the same size),
    flips, rotation, colour jitter, RandAugment. Every step is off by default."""

    crop_scale: tuple[float, float] | None = Field(
        None, description="random resized crop: area fraction range, e.g. [0.8, 1.0]; null: off"
    )
    crop_ratio: tuple[float, float] = Field((0.75, 1.3333333), description="random resized crop: aspect ratio range")
    hflip: float = Field(0.0, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    rotation: float = Field(0.0, ge=0, le=180, description="random rotation within +-degrees")
    brightness: float = Field(0.0, ge=0, description="colour jitter: brightness factor range 1 +- this")
    contrast: float = Field(0.0, ge=0, description="colour jitter: contrast factor range 1 +- this")
    saturation: float = Field(0.0, ge=0, description="colour jitter (RGB only): saturation range 1 +- this")
    hue: float = Field(0.0, ge=0, le=0.5, description="colour jitter (RGB only): hue shift within +- this")
    rand_augment: bool = Field(False, description="torchvision RandAugment after the steps above")
    rand_augment_ops: int = Field(2, ge=1, description="RandAugment: operations per image")
    rand_augment_magnitude: int = Field(9, ge=0, le=30, description="RandAugment: magnitude (0-30)")

    @model_validator(mode="after")
    def _ordered_ranges(self) -> "ImageAugmentConfig":
        for name in ("crop_scale", "crop_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value[0] <= value[1]:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high, got {list(value)}")
        if self.crop_scale is not None and self.crop_scale[1] > 1:
            raise ValueError(f"crop_scale is an area fraction: at most 1, got {list(self.crop_scale)}")
        return self


class VideoAugmentConfig(ImageAugmentConfig):
    """The image steps with the same random parameters for every frame of a clip, after a temporal
    jitter of the sampled frames."""

    temporal_jitter: int = Field(
        0, ge=0, description="each sampled frame may move up to this many frames (order kept)"
    )


class SpecAugmentConfig(_Section):
    """SpecAugment masking of the log-mel spectrogram (torchaudio ``TimeMasking`` /
    ``FrequencyMasking``), applied in the encoder's forward in training mode only (the spectrogram
    is computed there, on the model's device)."""

    time_masks: int = Field(0, ge=0, description="time masks per clip")
    time_mask_frames: int = Field(10, ge=1, description="longest time mask, in spectrogram frames")
    freq_masks: int = Field(0, ge=0, description="frequency masks per clip")
    freq_mask_bins: int = Field(8, ge=1, description="widest frequency mask, in mel bins")


class AudioAugmentConfig(SpecAugmentConfig):
    """Waveform steps in the preprocessor (random gain, time shift, noise), then SpecAugment."""

    gain_db: float = Field(0.0, ge=0, description="random gain within +- this many dB")
    shift_seconds: float = Field(0.0, ge=0, description="random circular time shift within +- this many seconds")
    noise_snr_db: float | None = Field(
        None, description="add white noise at a signal-to-noise ratio drawn from [this, this + 20] dB; null: off"
    )


class TextAugmentConfig(_Section):
    token_dropout: float = Field(
        0.0, ge=0, lt=1, description="probability that a token is replaced by the unknown token (specials kept)"
    )
