"""A tiny fused model (mmfuse/vector + concat + classification) and synthetic data for engine tests."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from mmfuse.model import FusedModel, build_fused_model
from mmfuse.recipe import Recipe, parse_recipe

INPUT_DIM = 6


def tiny_recipe(*overrides: str, **sections: Any) -> Recipe:
    raw: dict[str, Any] = {
        "seed": 3,
        "encoders": {
            "feats": {"type": "mmfuse/vector", "input_dim": INPUT_DIM, "hidden_dim": 16, "output_dim": 8},
            "extra": {"type": "mmfuse/vector", "input_dim": INPUT_DIM, "hidden_dim": 8, "output_dim": 8, "num_layers": 3},
        },
        "fusion": {"type": "mmfuse/concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.1},
        "tasks": {"label": {"type": "mmfuse/classification", "labels": ["a", "b", "c"]}},
        "data": {"batch_size": 4},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": {"epochs": 2, "log_every_steps": 2, "progress": "off", "tensorboard": "off"},
    }
    for section, values in sections.items():
        merges = isinstance(values, dict) and section not in ("encoders", "fusion", "tasks")  # replaced whole
        raw[section] = {**raw.get(section, {}), **values} if merges else values
    return parse_recipe(raw, overrides=list(overrides))


def tiny_model(recipe: Recipe, seed: int = 0) -> FusedModel:
    torch.manual_seed(seed)
    return build_fused_model(recipe)


class SyntheticRows(Dataset):
    """Rows ``{"x": [...], "label": str}`` whose label depends on the features (learnable)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.features = torch.randn(size, INPUT_DIM, generator=generator)
        self.labels = (self.features[:, 0] > 0).long() + (self.features[:, 1] > 1).long()

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x": self.features[index].tolist(), "label": "abc"[int(self.labels[index])]}


class TinyCollate:
    """Rows -> the BATCH layout of mmfuse/contracts.py (picklable for DataLoader workers)."""

    def __init__(self, model: FusedModel) -> None:
        self.preprocessors = {name: enc.preprocessor() for name, enc in model.encoders.items()}
        self.task = model.tasks["label"]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        inputs = {name: prep.collate([prep(row["x"]) for row in rows]) for name, prep in self.preprocessors.items()}
        present = {name: torch.ones(len(rows), dtype=torch.bool) for name in self.preprocessors}
        targets = {"label": torch.stack([self.task.encode_target(row["label"]) for row in rows])}
        return {"inputs": inputs, "present": present, "targets": targets}


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
