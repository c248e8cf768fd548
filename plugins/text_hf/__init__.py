"""``mmfuse/text_hf``: any transformers ``AutoModel`` + ``AutoTokenizer`` (hub name or local
folder), returning token features with their attention mask and a mask-aware pooled vector."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mmfuse.hookspecs import hookimpl
from mmfuse.augment import TextAugmentConfig

__all__ = ["TextHFConfig"]


class TextHFConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="hub name ('bert-base-uncased') or local folder saved with save_pretrained")
    tokenizer: str | None = Field(None, description="tokenizer name or folder; default: same as model")
    pretrained: bool = Field(
        True, description="load pretrained weights; false builds the architecture from its config, randomly initialised"
    )
    pooling: Literal["cls", "mean", "max"] = Field("mean", description="how token features become one vector")
    max_length: int = Field(128, gt=1, description="tokens kept per text (longer texts are truncated)")
    augment: TextAugmentConfig | None = Field(
        None, description="training-time token dropout: tokens replaced by the unknown (or mask) token"
    )


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "mmfuse/text_hf",
        builder="mmfuse_plugins.text_hf.encoder:build_text_encoder",
        config=TextHFConfig,
        description="text -> transformers AutoModel (token features + pooled vector)",
        aliases=("text",),
    )
