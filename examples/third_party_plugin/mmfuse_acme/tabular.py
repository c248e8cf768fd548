"""Torch side of ``acme/tabular``: per-column preprocessing and a feature-token encoder."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmfuse.contracts import Encoder, EncoderOutput, Preprocessor, SampleError, masked_mean
from mmfuse_acme import TabularEncoderConfig

__all__ = ["TabularPreprocessor", "TabularEncoder", "build_tabular_encoder"]

#: category index of a missing or unknown value (index 0 of every embedding table)
UNKNOWN = 0


class TabularPreprocessor(Preprocessor):
    """A row (mapping column -> value) -> standardised numbers with a presence flag per numeric
    column, and category indices (0 = unknown or missing)."""

    modality = "tabular"

    def __init__(self, config: TabularEncoderConfig) -> None:
        self.numeric = [(c.name, c.mean, c.std) for c in config.numeric]
        self.categorical = [(c.name, {value: i + 1 for i, value in enumerate(c.categories)}) for c in config.categorical]

    def __call__(self, value: Any) -> dict[str, Tensor]:
        if not isinstance(value, Mapping):
            raise SampleError(f"acme/tabular expects a mapping of column -> value, got {type(value).__name__}")
        numbers, present = [], []
        for name, mean, std in self.numeric:
            cell = value.get(name)
            if cell is None or cell == "":
                numbers.append(0.0)
                present.append(False)
                continue
            try:
                number = float(cell)
            except (TypeError, ValueError) as exc:
                raise SampleError(f"column '{name}': expected a number, got {cell!r}") from exc
            if not math.isfinite(number):
                raise SampleError(f"column '{name}': {cell!r} is not a finite number")
            numbers.append((number - mean) / std)
            present.append(True)
        codes = [index.get(str(value.get(name)), UNKNOWN) for name, index in self.categorical]
        return {
            "numeric": torch.tensor(numbers, dtype=torch.float32),
            "numeric_present": torch.tensor(present, dtype=torch.bool),
            "categories": torch.tensor(codes, dtype=torch.long),
        }

    def collate(self, items: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        # a missing row (None) still needs real tokens (mmfuse's contract): every column at its
        # mean, marked real; the presence mask keeps the row out of fusion downstream
        blank = {
            "numeric": torch.zeros(len(self.numeric)),
            "numeric_present": torch.ones(len(self.numeric), dtype=torch.bool),
            "categories": torch.zeros(len(self.categorical), dtype=torch.long),
        }
        rows = [blank if item is None else item for item in items]
        return {key: torch.stack([row[key] for row in rows]) for key in blank}

    def settings(self) -> dict[str, Any]:
        return {
            "numeric": [{"name": n, "mean": m, "std": s} for n, m, s in self.numeric],
            "categorical": [{"name": n, "categories": list(index)} for n, index in self.categorical],
        }


class ColumnTokenizer(nn.Module):
    """One token per column: ``value * weight + bias`` for numbers, an embedding for categories."""

    def __init__(self, config: TabularEncoderConfig) -> None:
        super().__init__()
        width, count = config.output_dim, len(config.numeric)
        self.numeric_weight = nn.Parameter(torch.randn(count, width) * 0.1) if count else None
        self.numeric_bias = nn.Parameter(torch.zeros(count, width)) if count else None
        self.embeddings = nn.ModuleList(nn.Embedding(len(c.categories) + 1, width) for c in config.categorical)

    def forward(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        tokens, masks = [], []
        if self.numeric_weight is not None:
            values = inputs["numeric"].unsqueeze(-1)
            tokens.append(values * self.numeric_weight + self.numeric_bias)
            masks.append(inputs["numeric_present"])
        if len(self.embeddings):
            codes = inputs["categories"]
            tokens.append(torch.stack([table(codes[:, i]) for i, table in enumerate(self.embeddings)], dim=1))
            masks.append(torch.ones_like(codes, dtype=torch.bool))
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)


class TabularEncoder(Encoder):
    modality = "tabular"

    def __init__(self, config: TabularEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.output_dim = config.output_dim
        self.tokenizer = ColumnTokenizer(config)
        self.block = nn.Sequential(
            nn.LayerNorm(config.output_dim),
            nn.Linear(config.output_dim, config.hidden_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.output_dim),
        )
        self.norm = nn.LayerNorm(config.output_dim)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        tokens, mask = self.tokenizer(inputs)
        tokens = tokens + self.block(tokens)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=self.norm(masked_mean(tokens, mask)))

    def preprocessor(self) -> TabularPreprocessor:
        return TabularPreprocessor(self.config)

    def layer_groups(self) -> list[nn.Module]:
        return [self.tokenizer, self.block, self.norm]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # one small block: recomputing it would cost more than the activations it saves
        return None


def build_tabular_encoder(config: TabularEncoderConfig) -> TabularEncoder:
    return TabularEncoder(config)
