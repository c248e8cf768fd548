"""Torch side of ``mmfuse/text_windows``: runs a transformers encoder over every window of every
text and returns the tokens of all windows side by side, with the offsets and word ids in
``EncoderOutput.extras`` for token-level tasks."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput, masked_mean
from mmfuse.backbones.hf import (
    export_hf_text_assets,
    hf_layer_groups,
    load_hf_text_backbone,
    set_hf_grad_checkpointing,
)
from mmfuse_plugins.text_spans import TextWindowsConfig
from mmfuse_plugins.text_spans.windows import EXTRA_KEYS, TextWindowsPreprocessor

__all__ = ["TextWindowsEncoder", "build_text_windows_encoder"]


class TextWindowsEncoder(Encoder):
    """``tokens`` ``[B, W*L, D]`` (window after window), ``mask`` ``[B, W*L]``; ``extras`` holds
    ``offsets [B, W, L, 2]``, ``word_ids [B, W, L]``, ``text_codes [B, C]`` and ``num_words [B]``."""

    modality = "text"

    def __init__(self, config: TextWindowsConfig, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # never used; unused parameters would break DDP
        self.model = model
        self.tokenizer = tokenizer
        self.output_dim = int(model.config.hidden_size)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        attention = inputs["attention_mask"]
        batch, windows, length = attention.shape
        flat_mask = attention.reshape(batch * windows, length)
        # padding windows (texts with fewer windows than the longest) are not run at all
        active = flat_mask.any(dim=1).nonzero(as_tuple=True)[0]
        arguments = {"input_ids": inputs["input_ids"].reshape(batch * windows, length)[active], "attention_mask": flat_mask[active]}
        if "token_type_ids" in inputs:
            arguments["token_type_ids"] = inputs["token_type_ids"].reshape(batch * windows, length)[active]
        hidden = self.model(**arguments).last_hidden_state
        tokens = hidden.new_zeros(batch * windows, length, hidden.shape[-1]).index_copy(0, active, hidden)
        tokens = tokens.reshape(batch, windows * length, -1)
        mask = attention.bool().reshape(batch, windows * length)
        pooled = tokens[:, 0] if self.config.pooling == "cls" else masked_mean(tokens, mask)
        extras = {key: inputs[key] for key in EXTRA_KEYS}
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled, extras=extras)

    def preprocessor(self) -> TextWindowsPreprocessor:
        config = self.config
        return TextWindowsPreprocessor(
            self.tokenizer,
            max_length=config.max_length,
            stride=config.stride,
            max_windows=config.max_windows,
            question_key=config.question_key,
            context_key=config.context_key,
        )

    def layer_groups(self) -> list[nn.Module]:
        return hf_layer_groups(self.model)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)

    def export_assets(self, folder: str) -> dict[str, Any]:
        return export_hf_text_assets(self.model, self.tokenizer, folder)


def build_text_windows_encoder(config: TextWindowsConfig) -> TextWindowsEncoder:
    model, tokenizer = load_hf_text_backbone(config.model, config.tokenizer, pretrained=config.pretrained)
    encoder = TextWindowsEncoder(config, model, tokenizer)
    encoder.preprocessor()  # a slow tokenizer fails here, at build time, with the fix
    return encoder
