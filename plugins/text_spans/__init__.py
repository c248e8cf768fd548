"""``mmfuse/text_windows``: a transformers text encoder for token-level tasks. Its preprocessor
keeps what extractive QA and tagging need to map tokens back to the text: character offsets and
word ids per token, a question + context pair, and long texts split into strided windows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmfuse.hookspecs import hookimpl

__all__ = ["TextWindowsConfig"]


class TextWindowsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="hub name ('bert-base-uncased') or local folder saved with save_pretrained")
    tokenizer: str | None = Field(None, description="a fast tokenizer's name or folder; default: same as model")
    pretrained: bool = Field(
        True, description="load pretrained weights; false builds the architecture from its config, randomly initialised"
    )
    pooling: Literal["cls", "mean"] = Field("mean", description="how the tokens of all windows become one vector")
    max_length: int = Field(384, gt=4, description="tokens per window, special tokens and the question included")
    stride: int = Field(128, ge=0, description="tokens of the text shared by two consecutive windows")
    max_windows: int = Field(8, gt=0, description="windows kept per text; the rest of a longer text is dropped")
    question_key: str = Field("question", description="key of the question when a value is {question, context}")
    context_key: str = Field("context", description="key of the text when a value is {question, context}")

    @model_validator(mode="after")
    def _check(self) -> "TextWindowsConfig":
        if self.stride >= self.max_length // 2:
            raise ValueError(f"stride ({self.stride}) must be less than half of max_length ({self.max_length})")
        return self


@hookimpl
def mmfuse_register_encoders(register) -> None:
    register(
        "mmfuse/text_windows",
        builder="mmfuse_plugins.text_spans.encoder:build_text_windows_encoder",
        config=TextWindowsConfig,
        description="text or question+context -> transformers AutoModel over strided windows, with offsets and word ids",
    )
