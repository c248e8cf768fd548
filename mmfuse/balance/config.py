"""Recipe settings of the imbalance tools (pydantic, no torch).

- ``fusion.modality_dropout``: :class:`ModalityDropoutConfig`
- ``tasks.<name>.unimodal_aux``: :class:`UnimodalAuxConfig`
- ``trainer.gradient_modulation``: :class:`GradientModulationConfig`
- ``trainer.modality_lr``: :class:`ModalityLRConfig`
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse.recipe_references import EncoderName

__all__ = ["ModalityDropoutConfig", "UnimodalAuxConfig", "GradientModulationConfig", "ModalityLRConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModalityDropoutConfig(_Strict):
    """Drop whole modalities of training rows through the presence mask (never at evaluation)."""

    p: float | dict[EncoderName, float] = Field(
        0.2, description="drop probability of a present modality; one number, or {encoder: p} (others: 0)"
    )
    min_present: int = Field(
        1, ge=1, description="a row keeps at least this many of its modalities (all of them if it has fewer)"
    )

    @model_validator(mode="after")
    def _probabilities_in_range(self) -> "ModalityDropoutConfig":
        values = self.p.values() if isinstance(self.p, dict) else [self.p]
        for value in values:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"a modality dropout probability must be in [0, 1), got {value}")
        return self

    def probability_of(self, encoder: str) -> float:
        if isinstance(self.p, dict):
            return float(self.p.get(encoder, 0.0))
        return float(self.p)


class UnimodalAuxConfig(_Strict):
    """One head per encoder on that encoder's pooled features, with the task's own loss."""

    weight: float = Field(0.3, ge=0, description="weight of each auxiliary head's loss in the total")
    detach: bool = Field(
        False, description="train the heads on detached features (probes: they do not shape the encoders)"
    )
    keep_at_save: bool = Field(
        False, description="keep the heads in the saved model folder (default: dropped, the model is smaller)"
    )


class GradientModulationConfig(_Strict):
    """OGM-GE (Peng et al., CVPR 2022): shrink the gradients of the modality that is ahead."""

    task: str | None = Field(
        None, description="task whose unimodal_aux heads give the confidences; default: the first with unimodal_aux"
    )
    alpha: float = Field(0.5, gt=0, description="strength: k = 1 - tanh(alpha * rho) for a dominant modality")
    noise: bool = Field(True, description="GE: add Gaussian noise with the std of each gradient tensor")
    start_step: int = Field(0, ge=0, description="first optimizer step that is modulated")
    end_step: int | None = Field(None, ge=0, description="last optimizer step that is modulated; default: all")


class ModalityLRConfig(_Strict):
    """Modality-balanced learning rates: an encoder that is ahead gets a smaller lr, one behind a larger."""

    task: str | None = Field(
        None, description="task whose unimodal_aux heads give the confidences; default: the first with unimodal_aux"
    )
    gamma: float = Field(1.0, gt=0, description="exponent of the confidence ratio")
    momentum: float = Field(0.9, ge=0, lt=1, description="moving average of the per-modality confidences")
    min_factor: float = Field(0.25, gt=0, le=1, description="lower bound of the lr multiplier")
    max_factor: float = Field(4.0, ge=1, description="upper bound of the lr multiplier")
