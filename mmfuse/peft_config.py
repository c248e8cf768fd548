"""``encoders.<name>.peft``: parameter-efficient fine-tuning settings of one encoder. Imports no
torch and no peft (``mmfuse validate`` checks them without either installed)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PeftSettings"]


class PeftSettings(BaseModel):
    """Adapters added to an encoder with the ``peft`` library (extra ``mmfuse[peft]``): the
    encoder's own weights are frozen, its adapters train (with the fusion head and the tasks).

    ``target_modules`` are module names inside the encoder, matched as peft matches them (a name
    ends with one of them, or a regular expression when a single string): ``[query, value]`` for
    BERT, ``[qkv]`` for a timm ViT, ``[conv2]`` for a ResNet's convolutions."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "ia3"] = Field(..., description="lora (low-rank updates) or ia3 (learned rescaling)")
    target_modules: list[str] | str = Field(..., description="modules to adapt: names, or one regular expression")
    r: int = Field(8, ge=1, description="lora: rank of the update")
    alpha: float = Field(16.0, gt=0, description="lora: scaling numerator (update scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="lora: dropout on the adapter's input")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="lora: which biases train")
    feedforward_modules: list[str] | None = Field(
        None, description="ia3: the targets that are feed-forward layers (their input is rescaled, not their output)"
    )
    merge_adapters: bool = Field(
        False, description="the saved model folder holds the adapters merged into the weights (plain encoder) instead of separately"
    )

    @model_validator(mode="after")
    def _method_fields(self) -> "PeftSettings":
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the modules to adapt, e.g. [query, value]")
        if self.method == "ia3":
            lora_only = [k for k in ("r", "alpha", "dropout", "bias") if k in self.model_fields_set]
            if lora_only:
                raise ValueError(f"{', '.join(lora_only)} apply to method: lora only")
            if self.feedforward_modules and isinstance(self.target_modules, list):
                outside = sorted(set(self.feedforward_modules) - set(self.target_modules))
                if outside:
                    raise ValueError(f"feedforward_modules {outside} must also be in target_modules")
        elif self.feedforward_modules is not None:
            raise ValueError("feedforward_modules applies to method: ia3 only")
        return self
