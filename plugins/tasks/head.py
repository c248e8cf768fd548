"""The small MLP head that tasks put on the fused vector."""

from __future__ import annotations

from torch import nn

__all__ = ["make_head"]


def make_head(in_dim: int, out_dim: int, hidden_dim: int | None, dropout: float) -> nn.Module:
    if hidden_dim is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
    )
