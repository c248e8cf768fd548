"""``mmfuse/vector``: an encoder for a fixed-length numeric feature vector (tabular features,
precomputed embeddings). A row holds a list of numbers in the encoder's column."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl

__all__ = ["VectorEncoderConfig"]


class VectorEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_dim: int = Field(..., gt=0, description="length of the feature vector")
    hidden_dim: int = Field(64, gt=0)
    output_dim: int = Field(64, gt=0)
    num_layers: int = Field(2, ge=1, description="MLP depth")
    dropout: float = Field(0.0, ge=0, lt=1)
    layer_norm: bool = Field(
        False, description="LayerNorm across the input features (suits embeddings; erases scale of a few raw features)"
    )


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "mmfuse/vector",
        builder="mmfuse_plugins.vector.encoder:build_vector_encoder",
        config=VectorEncoderConfig,
        description="numeric feature vector -> MLP",
    )
