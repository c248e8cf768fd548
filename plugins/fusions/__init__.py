"""Built-in fusion heads. Config classes and registration only; torch code in sibling modules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl

__all__ = ["ConcatFusionConfig"]


class ConcatFusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    projection_dim: int = Field(128, gt=0, description="each pooled vector is projected to this size")
    hidden_dims: list[int] = Field(default_factory=lambda: [256], description="MLP after concatenation")
    output_dim: int = Field(128, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


@hookimpl
def mmfuse_register_fusions(register) -> None:
    register(
        "mmfuse/concat",
        builder="mmfuse_plugins.fusions.concat:build_concat_fusion",
        config=ConcatFusionConfig,
        description="late fusion: project each pooled vector, concatenate, MLP",
        aliases=("late",),
    )
