"""A tiny two/three-encoder model (mmfuse/vector + concat + classification) and batches with
missing modalities, for the imbalance tests."""

from __future__ import annotations

from typing import Any

import torch

from mmfuse.model import FusedModel, build_fused_model
from mmfuse.recipe import Recipe, parse_recipe

DIM = 5
LABELS = ["a", "b", "c"]


def recipe(encoders: tuple[str, ...] = ("left", "right"), fusion: dict | None = None, task: dict | None = None,
           trainer: dict | None = None, data: dict | None = None) -> Recipe:
    raw: dict[str, Any] = {
        "seed": 1,
        "encoders": {name: {"type": "mmfuse/vector", "input_dim": DIM, "hidden_dim": 8, "output_dim": 6} for name in encoders},
        "fusion": {"type": "mmfuse/concat", "projection_dim": 6, "hidden_dims": [8], "output_dim": 6, **(fusion or {})},
        "tasks": {"label": {"type": "mmfuse/classification", "labels": LABELS, **(task or {})}},
        "data": {"batch_size": 8, **(data or {})},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": {"epochs": 1, "progress": "off", "tensorboard": "off", "device": "cpu", **(trainer or {})},
    }
    return parse_recipe(raw)


def model(recipe_: Recipe, seed: int = 0) -> FusedModel:
    torch.manual_seed(seed)
    return build_fused_model(recipe_)


def batch(encoders: tuple[str, ...] = ("left", "right"), size: int = 6, seed: int = 0,
          present: dict[str, list[bool]] | None = None) -> dict[str, Any]:
    """Random inputs; by default 'left' is missing on rows 1 and 4, 'right' on rows 2 and 5."""
    generator = torch.Generator().manual_seed(seed)
    default = {
        "left": [i not in (1, 4) for i in range(size)],
        "right": [i not in (2, 5) for i in range(size)],
    }
    present = present or default
    return {
        "inputs": {name: {"values": torch.randn(size, DIM, generator=generator)} for name in encoders},
        "present": {name: torch.tensor(present.get(name, [True] * size)) for name in encoders},
        "targets": {"label": torch.randint(0, len(LABELS), (size,), generator=generator)},
    }
