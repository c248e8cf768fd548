"""Config classes of the self-supervised tasks (torch-free; the task code is in ``masked_lm.py``
and ``masked_features.py``, the per-family regions in ``feature_regions.py``).

They need no target column: the task masks an encoder's inputs in ``Task.prepare_batch`` and
learns to recover what it hid."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmfuse.recipe_references import EncoderName

__all__ = ["MaskedLMConfig", "MaskedFeaturesConfig"]


class MaskedLMConfig(BaseModel):
    """Masked language modelling on a ``text_hf`` encoder with the library's own MLM head
    (``AutoModelForMaskedLM``; pretrained head weights when the encoder loads pretrained weights)
    and its ``DataCollatorForLanguageModeling`` masking."""

    model_config = ConfigDict(extra="forbid")
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "perplexity")

    encoder: EncoderName = Field(..., description="the text_hf encoder whose tokens are masked and predicted")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of real tokens chosen for prediction")
    mask_replace_prob: float = Field(0.8, ge=0, le=1, description="of the chosen tokens: share replaced by [MASK]")
    random_replace_prob: float = Field(0.1, ge=0, le=1, description="of the chosen tokens: share replaced by a random token")
    whole_word_mask: bool = Field(False, description="mask whole words (needs a fast tokenizer)")

    @model_validator(mode="after")
    def _shares(self) -> "MaskedLMConfig":
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ValueError("mask_replace_prob + random_replace_prob must be at most 1 (the rest keep their token)")
        return self


class MaskedFeaturesConfig(BaseModel):
    """Masked-feature reconstruction on an image, audio or video encoder (MaskFeat / SimMIM style).

    Each present sample's input is cut into a grid of regions (image: rows x columns of its real
    extent; audio: equal time spans of its real length; video: temporal segments of its real frames
    x rows x columns); ``mask_ratio`` of them are blanked (set to 0, the normalised input's mean)
    and a small decoder predicts low-level features of the hidden regions, computed from the
    unmasked input: per-cell mean colour (image, video) or log-mel band energies (audio).
    docs/pretraining.md explains the choices."""

    model_config = ConfigDict(extra="forbid")
    metric_names: ClassVar[tuple[str, ...]] = ("mse", "r2")

    encoder: EncoderName = Field(..., description="the image, audio or video encoder whose input is masked")
    mask_ratio: float = Field(0.5, gt=0, lt=1, description="share of a sample's regions hidden (at least one stays visible)")
    image_grid: list[int] = Field([4, 4], description="image regions: [rows, columns] over the image's real extent")
    video_grid: list[int] = Field(
        [4, 2, 2], description="video regions: [temporal segments, rows, columns] over the real frames"
    )
    audio_spans: int = Field(8, ge=2, description="audio regions: equal time spans of the clip's real length")
    target_cells: int = Field(
        2, ge=1, le=8, description="image / video target: mean colour of target_cells x target_cells cells per region"
    )
    audio_bands: int = Field(16, ge=1, le=128, description="audio target: log-mel band energies per span")
    normalize_targets: bool = Field(
        True, description="subtract each target feature's mean over the sample's regions (brightness / loudness invariant)"
    )
    decoder_dim: int = Field(128, gt=0, description="width of the decoder that reads the encoder's tokens")
    decoder_heads: int = Field(4, gt=0, description="attention heads of the decoder's region queries")
    seed: int = Field(0, ge=0, description="masks depend on (seed, epoch, sample index) only")
    normalize_across_processes: bool = Field(
        True, description="under torch.distributed, divide by the masked count of all processes (as one process would)"
    )

    @field_validator("image_grid")
    @classmethod
    def _image_grid(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or min(value) < 1 or value[0] * value[1] < 2:
            raise ValueError(f"image_grid must be [rows, columns] with at least 2 regions, got {value}")
        return value

    @field_validator("video_grid")
    @classmethod
    def _video_grid(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or min(value) < 1 or value[0] * value[1] * value[2] < 2:
            raise ValueError(f"video_grid must be [segments, rows, columns] with at least 2 regions, got {value}")
        return value

    @model_validator(mode="after")
    def _heads(self) -> "MaskedFeaturesConfig":
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_heads ({self.decoder_heads}) must divide decoder_dim ({self.decoder_dim})")
        return self
