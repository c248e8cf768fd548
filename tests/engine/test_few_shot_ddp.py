"""Few-shot under torchrun (2 gloo processes): every rank draws the same k rows per class before
the sampler shards them, and the prototype task's class means are summed across ranks, so the
saved prototypes are the class means of exactly the drawn rows, as in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from mmfuse.data.sources import load_splits
from mmfuse.recipe import load_recipe
from mmfuse.run import train
from tests.engine.torchrun import train_under_torchrun

CENTRES = {"a": [2.0, 0.0, 0.0], "b": [0.0, 2.0, 0.0], "c": [0.0, 0.0, 2.0]}


def _write_rows(path: Path, per_class: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label, centre in CENTRES.items():
        for _ in range(per_class):
            x = torch.tensor(centre) + 0.8 * torch.randn(3, generator=generator)
            rows.append({"x": [round(v, 4) for v in x.tolist()], "label": label})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _recipe_file(folder: Path) -> Path:
    _write_rows(folder / "train.jsonl", 7, seed=0)
    _write_rows(folder / "val.jsonl", 3, seed=1)
    recipe = {
        "seed": 2,
        "data": {"train": "train.jsonl", "val": "val.jsonl", "shots_per_class": 4, "batch_size": 2, "num_workers": 0},
        "encoders": {"x": {"type": "vector", "input_dim": 3, "hidden_dim": 8, "output_dim": 8}},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [], "output_dim": 6, "dropout": 0.0},
        "tasks": {"label": {"type": "prototype"}},
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": 2, "device": "cpu", "progress": "off", "tensorboard": "off"},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _class_means_by_hand(model, recipe, rows) -> torch.Tensor:
    """Unit-length fused vectors of ``rows``, averaged per class, with the saved model."""
    from mmfuse.predict import Predictor

    predictor = Predictor(model, recipe)
    batch = predictor.collate([{"x": row.values["x"]} for row in rows])
    with torch.no_grad():
        features, present = model.encode(batch)
        fused = F.normalize(model.fusion(features, present), dim=-1)
    labels = torch.tensor(["abc".index(row.values["label"]) for row in rows])
    return torch.stack([fused[labels == c].mean(0) for c in range(3)])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_draw_the_same_shots_and_share_the_prototypes(tmp_path, strategy):
    from mmfuse.artifact import load_model

    path = _recipe_file(tmp_path)
    output = train_under_torchrun([str(path), f"trainer.strategy={strategy}", "--run-dir", str(tmp_path / "ddp")], cwd=tmp_path)
    assert "kept 12 of 21 training rows" in output
    assert "tasks.label: prototypes from 12 training rows (3 classes)" in output

    drawn = load_splits(load_recipe(path)).train.rows
    model, recipe = load_model(tmp_path / "ddp" / "model")
    task = model.tasks["label"]
    assert task.prototype_rows.tolist() == [4.0, 4.0, 4.0]  # 6 rows per rank, summed: no row twice
    torch.testing.assert_close(task.prototypes, _class_means_by_hand(model.eval(), recipe, drawn), atol=1e-5, rtol=1e-5)

    # one process with the global batch (2 ranks x 2 rows) sees the same rows in every step
    single = train(load_recipe(path, ["data.batch_size=4"]), run_dir=tmp_path / "one")
    alone, _ = load_model(single.model_dir)
    torch.testing.assert_close(alone.tasks["label"].prototypes, task.prototypes, atol=1e-4, rtol=1e-4)
