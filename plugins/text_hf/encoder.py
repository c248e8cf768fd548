"""Torch side of ``mmfuse/text_hf``: tokenisation in workers and a transformers encoder."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from mmfuse.backbones.hf import (
    export_hf_text_assets,
    hf_layer_groups,
    load_hf_text_backbone,
    pool_tokens,
    set_hf_grad_checkpointing,
)
from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor, SampleError
from mmfuse_plugins.text_hf import TextHFConfig

__all__ = ["TextPreprocessor", "TextHFEncoder", "build_text_encoder"]


class TextPreprocessor(Preprocessor):
    """str -> ``{"input_ids", "attention_mask"}`` (Long[T], truncated to ``max_length``); collate
    right-pads to the longest text of the batch with the tokenizer's pad id."""

    modality = "text"

    def __init__(self, tokenizer: Any, max_length: int, token_dropout: float = 0.0) -> None:
        if tokenizer.pad_token_id is None:
            # decoder-only tokenizers (GPT-2) have no pad token; the mask makes its value irrelevant
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.token_dropout = token_dropout
        self._blank = self._encode("")

    def _encode(self, text: str) -> dict[str, Tensor]:
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_length, return_attention_mask=True)
        ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
        if ids.numel() == 0:  # tokenizers without special tokens give nothing for ""; keep one row
            ids = torch.tensor([self.tokenizer.pad_token_id], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if not isinstance(value, str):
            raise SampleError(f"expected text (a string), got {type(value).__name__}: {value!r:.80}")
        return self._encode(value)

    @property
    def augmentation_enabled(self) -> bool:
        return self.token_dropout > 0

    def augment(self, tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Token dropout: tokens replaced by the mask token (or the unknown token), specials kept."""
        if not self.augmentation_enabled:
            return tensors
        from mmfuse.augment.text import drop_tokens

        replacement = self.tokenizer.mask_token_id
        if replacement is None:
            replacement = self.tokenizer.unk_token_id
        if replacement is None:
            return tensors  # nothing neutral to replace tokens with (byte-level BPE without <unk>)
        keep = set(self.tokenizer.all_special_ids) - {replacement}
        return {**tensors, "input_ids": drop_tokens(tensors["input_ids"], self.token_dropout, replacement, keep, generator)}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        # a missing text becomes the encoding of "" (real tokens, so attention never sees an
        # all-padding row); the presence mask excludes it downstream
        rows = [(self._blank if item is None else item)["input_ids"] for item in items]
        # one padding call and one comparison per batch, not a copy per row
        ids = pad_sequence(rows, batch_first=True, padding_value=int(self.tokenizer.pad_token_id)).long()
        lengths = torch.tensor([row.shape[0] for row in rows])
        mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
        return {"input_ids": ids, "attention_mask": mask}

    def settings(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "pad_token_id": int(self.tokenizer.pad_token_id)}


class TextHFEncoder(Encoder):
    modality = "text"

    def __init__(self, config: TextHFConfig, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # T5 / BART: only the encoder stack reads text
        if getattr(model, "pooler", None) is not None:
            # the pooler's output is never used; unused parameters would break DDP
            model.pooler = None
        self.model = model
        self.tokenizer = tokenizer
        self.output_dim = int(model.config.hidden_size)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        attention_mask = inputs["attention_mask"]
        output = self.model(input_ids=inputs["input_ids"], attention_mask=attention_mask)
        tokens = output.last_hidden_state
        mask = attention_mask.bool()
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pool_tokens(tokens, mask, self.config.pooling))

    def preprocessor(self) -> TextPreprocessor:
        dropout = self.config.augment.token_dropout if self.config.augment is not None else 0.0
        return TextPreprocessor(self.tokenizer, self.config.max_length, token_dropout=dropout)

    def layer_groups(self) -> list[nn.Module]:
        return hf_layer_groups(self.model)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)

    def export_assets(self, folder: str) -> dict[str, Any]:
        return export_hf_text_assets(self.model, self.tokenizer, folder)


def build_text_encoder(config: TextHFConfig) -> TextHFEncoder:
    model, tokenizer = load_hf_text_backbone(config.model, config.tokenizer, pretrained=config.pretrained)
    return TextHFEncoder(config, model, tokenizer)
