"""The MLP that ``concat`` and ``tensor`` fusion put after their combined vector."""

from __future__ import annotations

from torch import nn

__all__ = ["make_mlp"]


def make_mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: float, activation: type[nn.Module]) -> nn.Sequential:
    """``(Linear, activation, Dropout)`` per hidden width, then a Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), activation(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
