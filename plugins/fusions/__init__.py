"""Built-in fusion heads. Config classes and registration only; torch code in sibling modules.

Every head is built as ``builder(config, input_dims={encoder_name: output_dim})``, exposes
``output_dim`` and excludes a modality missing from a sample through the presence mask (see
``mmfuse.masking``). docs/fusion_and_tasks.md describes each one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmfuse.hookspecs import hookimpl
from mmfuse.recipe_references import EncoderName

__all__ = [
    "ConcatFusionConfig",
    "PoolingFusionConfig",
    "GatedFusionConfig",
    "AttentionFusionConfig",
    "TransformerFusionConfig",
    "TensorFusionConfig",
    "LowRankFusionConfig",
    "FilmFusionConfig",
    "EnsembleFusionConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConcatFusionConfig(_Strict):
    projection_dim: int = Field(128, gt=0, description="each pooled vector is projected to this size")
    hidden_dims: list[int] = Field(default_factory=lambda: [256], description="MLP after concatenation")
    output_dim: int = Field(128, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class PoolingFusionConfig(_Strict):
    """``mean`` / ``sum``: each pooled vector projected to ``output_dim``, reduced over present
    modalities."""

    output_dim: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class GatedFusionConfig(_Strict):
    output_dim: int = Field(128, gt=0, description="size of each modality's tanh hidden vector")
    dropout: float = Field(0.0, ge=0, lt=1)


class AttentionFusionConfig(_Strict):
    output_dim: int = Field(128, gt=0, description="each pooled vector is projected to this size")
    attention_dim: int = Field(64, gt=0, description="hidden size of the scoring MLP")
    dropout: float = Field(0.0, ge=0, lt=1)


class TransformerFusionConfig(_Strict):
    d_model: int = Field(128, gt=0, description="token width inside the fusion transformer (= output_dim)")
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    ff_dim: int | None = Field(None, gt=0, description="feed-forward width; default 4 * d_model")
    dropout: float = Field(0.1, ge=0, lt=1)
    pooling: Literal["cls", "mean"] = Field("cls", description="output: the CLS token or the mean of real tokens")
    tokens: Literal["all", "pooled"] = Field(
        "all", description="'all': every encoder token; 'pooled': one token per modality (cheaper)"
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TransformerFusionConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self


class TensorFusionConfig(_Strict):
    projection_dim: int = Field(
        16, gt=0, description="each pooled vector is projected to this size before the outer product"
    )
    hidden_dims: list[int] = Field(default_factory=lambda: [128], description="MLP after the outer product")
    output_dim: int = Field(128, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_product_size: int = Field(
        1_000_000, gt=0, description="refuse an outer product larger than this (use low_rank instead)"
    )


class LowRankFusionConfig(_Strict):
    projection_dim: int = Field(32, gt=0, description="each pooled vector is projected to this size")
    rank: int = Field(4, ge=1, description="number of rank-one factors")
    output_dim: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class FilmFusionConfig(_Strict):
    target: EncoderName = Field(..., description="encoder whose tokens are modulated")
    conditioning: list[EncoderName] | None = Field(
        None, description="encoder(s) that produce the FiLM scale and shift; default: every other encoder"
    )
    hidden_dim: int = Field(128, gt=0, description="width of the modulated target features")
    output_dim: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("conditioning", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _target_does_not_condition_itself(self) -> "FilmFusionConfig":
        if self.conditioning is not None:
            if not self.conditioning:
                raise ValueError("conditioning must name at least one encoder")
            if self.target in self.conditioning:
                raise ValueError(f"the target encoder '{self.target}' cannot also condition itself")
        return self


class EnsembleFusionConfig(_Strict):
    """Late-fusion ensemble: per-modality classifiers, log-probabilities combined by learned
    presence-aware weights. The output is ``num_classes`` wide: the combined log-probabilities."""

    num_classes: int = Field(..., ge=2, description="number of classes of the task this ensemble serves")
    hidden_dim: int | None = Field(None, gt=0, description="optional hidden layer of each per-modality classifier")
    dropout: float = Field(0.0, ge=0, lt=1)


@hookimpl
def mmfuse_register_fusions(register) -> None:
    register(
        "mmfuse/concat",
        builder="mmfuse_plugins.fusions.concat:build_concat_fusion",
        config=ConcatFusionConfig,
        description="late fusion: project each pooled vector, concatenate, MLP",
        aliases=("late",),
    )
    register(
        "mmfuse/mean",
        builder="mmfuse_plugins.fusions.pooling:build_mean_fusion",
        config=PoolingFusionConfig,
        description="mean of projected pooled vectors over the present modalities",
    )
    register(
        "mmfuse/sum",
        builder="mmfuse_plugins.fusions.pooling:build_sum_fusion",
        config=PoolingFusionConfig,
        description="sum of projected pooled vectors over the present modalities",
    )
    register(
        "mmfuse/attention",
        builder="mmfuse_plugins.fusions.pooling:build_attention_fusion",
        config=AttentionFusionConfig,
        description="attention-weighted pooling over the present modalities",
    )
    register(
        "mmfuse/gated",
        builder="mmfuse_plugins.fusions.gated:build_gated_fusion",
        config=GatedFusionConfig,
        description="gated multimodal unit (GMU): learned per-modality gates",
        aliases=("gmu",),
    )
    register(
        "mmfuse/transformer",
        builder="mmfuse_plugins.fusions.transformer:build_transformer_fusion",
        config=TransformerFusionConfig,
        description="cross-modal transformer over all tokens with modality embeddings; CLS or mean",
    )
    register(
        "mmfuse/tensor",
        builder="mmfuse_plugins.fusions.tensor:build_tensor_fusion",
        config=TensorFusionConfig,
        description="Tensor Fusion Network: outer product of [h; 1] vectors, MLP",
        aliases=("tfn",),
    )
    register(
        "mmfuse/low_rank",
        builder="mmfuse_plugins.fusions.tensor:build_low_rank_fusion",
        config=LowRankFusionConfig,
        description="Low-rank Multimodal Fusion: rank-R factorised tensor fusion",
        aliases=("lmf",),
    )
    register(
        "mmfuse/film",
        builder="mmfuse_plugins.fusions.film:build_film_fusion",
        config=FilmFusionConfig,
        description="FiLM: conditioning encoder(s) scale and shift a target encoder's tokens",
    )
    register(
        "mmfuse/ensemble",
        builder="mmfuse_plugins.fusions.ensemble:build_ensemble_fusion",
        config=EnsembleFusionConfig,
        description="late-fusion ensemble: per-modality classifiers, log-probs combined by presence-aware weights",
    )
