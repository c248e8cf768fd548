"""Tiny data and recipes for chain tests: two numeric views of one latent, and a label from it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

DIM = 6


def write_views(folder: Path, rows: int, seed: int, labelled: bool = True) -> Path:
    """Rows ``{"a": [...], "b": [...], "label": "x"|"y"}``: a and b are noisy views of one latent."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        latent = [rng.gauss(0, 1) for _ in range(DIM)]
        row: dict[str, Any] = {
            "a": [v + 0.1 * rng.gauss(0, 1) for v in latent],
            "b": [-v + 0.1 * rng.gauss(0, 1) for v in reversed(latent)],
        }
        if labelled:
            row["label"] = "x" if latent[0] + latent[1] > 0 else "y"
        lines.append(json.dumps(row))
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{'labelled' if labelled else 'unlabelled'}-{seed}.jsonl"
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def encoders() -> dict[str, Any]:
    return {
        "a": {"type": "vector", "input_dim": DIM, "hidden_dim": 12, "output_dim": 8},
        "b": {"type": "vector", "input_dim": DIM, "hidden_dim": 12, "output_dim": 8},
    }


def trainer(epochs: int = 2) -> dict[str, Any]:
    return {"epochs": epochs, "device": "cpu", "log_every_steps": 2, "progress": "off", "tensorboard": "off"}


def pretrain_recipe(data: Path) -> dict[str, Any]:
    """Contrastive alignment of a and b on unlabelled rows."""
    return {
        "name": "align",
        "seed": 1,
        "data": {"train": str(data), "batch_size": 8},
        "encoders": encoders(),
        "fusion": {"type": "mean", "output_dim": 8},
        "tasks": {"align": {"type": "contrastive", "encoders": ["a", "b"], "embed_dim": 8}},
        "optimizer": {"lr": 0.01},
        "trainer": trainer(),
    }


def finetune_recipe(train: Path, val: Path) -> dict[str, Any]:
    """A classifier on both views."""
    return {
        "name": "classify",
        "seed": 2,
        "data": {"train": str(train), "val": str(val), "batch_size": 8},
        "encoders": encoders(),
        "fusion": {"type": "concat", "projection_dim": 8, "output_dim": 8},
        "tasks": {"label": {"type": "classification"}},
        "optimizer": {"lr": 0.01},
        "trainer": trainer(3),
    }
