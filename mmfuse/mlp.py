"""The one MLP builder of mmfuse: the layers fusion heads put after their combined vector and the
heads tasks put on the fused vector. Plugins may use it too.

Layer order (and so the state-dict keys of saved models) is part of the model-folder format:
``[Dropout]`` then ``(Linear, activation, Dropout)`` per hidden width, then a ``Linear``.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["build_mlp", "build_task_head"]


def build_mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    *,
    dropout: float = 0.0,
    activation: type[nn.Module] = nn.GELU,
    dropout_first: bool = False,
) -> nn.Sequential:
    """``(Linear, activation, Dropout)`` per hidden width, then a Linear to ``out_dim``;
    ``dropout_first`` also drops inputs (before the first Linear)."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout_first else []
    width = in_dim
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), activation(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def build_task_head(in_dim: int, out_dim: int, hidden_dim: int | None, dropout: float) -> nn.Sequential:
    """The head of the built-in tasks: ``Dropout -> Linear`` without a hidden layer (dropout is
    then its only regularisation), else ``Linear -> GELU -> Dropout -> Linear``."""
    hidden = [hidden_dim] if hidden_dim is not None else []
    return build_mlp(in_dim, hidden, out_dim, dropout=dropout, dropout_first=hidden_dim is None)
