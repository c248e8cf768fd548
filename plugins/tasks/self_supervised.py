"""Config classes of the self-supervised tasks (torch-free; the task code is in ``masked_lm.py``).

They need no target column: the task masks an encoder's inputs in ``Task.prepare_batch`` and
learns to recover what it hid."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse.recipe_references import EncoderName

__all__ = ["MaskedLMConfig"]


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
