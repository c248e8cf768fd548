"""Torch side of ``mmfuse/vector``: preprocessing of a numeric list and an MLP encoder."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor, SampleError
from mmfuse_plugins.vector import VectorEncoderConfig

__all__ = ["VectorPreprocessor", "VectorEncoder", "build_vector_encoder"]


class VectorPreprocessor(Preprocessor):
    modality = "vector"

    def __init__(self, input_dim: int) -> None:
        self.input_dim = input_dim

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if isinstance(value, str):  # a CSV cell; iterating the string would read its characters
            value = _numbers_in_text(value)
        if isinstance(value, (dict, bool)) or not hasattr(value, "__iter__"):
            raise SampleError(f"expected a list of {self.input_dim} numbers, got {value!r:.80}")
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError) as exc:
            raise SampleError(f"expected a list of {self.input_dim} numbers, got {value!r}") from exc
        if len(values) != self.input_dim:
            raise SampleError(f"expected {self.input_dim} numbers, got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise SampleError(f"non-finite number in {values!r}")
        return {"values": torch.tensor(values, dtype=torch.float32)}

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        blank = torch.zeros(self.input_dim)
        return {"values": torch.stack([blank if item is None else item["values"] for item in items])}

    def settings(self) -> dict[str, Any]:
        return {"input_dim": self.input_dim}


def _numbers_in_text(text: str) -> list[str]:
    """``"[1, 2.5]"``, ``"1,2.5"`` or ``"1 2.5"`` -> its number strings (converted by the caller)."""
    return [part for part in text.strip().strip("[]").replace(",", " ").split() if part]


class VectorEncoder(Encoder):
    modality = "vector"

    def __init__(self, config: VectorEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.output_dim = config.output_dim
        self.norm = nn.LayerNorm(config.input_dim) if config.layer_norm else nn.Identity()
        layers: list[nn.Module] = []
        width = config.input_dim
        for index in range(config.num_layers):
            out = config.output_dim if index == config.num_layers - 1 else config.hidden_dim
            layers.append(nn.Sequential(nn.Linear(width, out), nn.GELU(), nn.Dropout(config.dropout)))
            width = out
        self.layers = nn.ModuleList(layers)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        hidden = self.norm(inputs["values"])
        for layer in self.layers:
            hidden = layer(hidden)
        mask = torch.ones(hidden.shape[0], 1, dtype=torch.bool, device=hidden.device)
        return EncoderOutput(tokens=hidden.unsqueeze(1), mask=mask, pooled=hidden)

    def preprocessor(self) -> VectorPreprocessor:
        return VectorPreprocessor(self.config.input_dim)

    def layer_groups(self) -> list[nn.Module]:
        groups: list[nn.Module] = [self.norm] if self.config.layer_norm else []
        return [*groups, *self.layers]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # a few Linear layers: recomputation would cost more than the activations it saves
        return None


def build_vector_encoder(config: VectorEncoderConfig) -> VectorEncoder:
    return VectorEncoder(config)
