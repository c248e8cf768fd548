"""One tiny end-to-end run of the whole stack (manifest -> text_hf + vector encoders -> gated
fusion -> two tasks -> engine) compared with stored loss values, as torchtune's recipe tests do:
a change anywhere in the numeric path (preprocessing, init order, loss weighting, optimizer
groups, schedule) moves these numbers."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch

from mmfuse.recipe import parse_recipe
from mmfuse.run import train
from mmfuse.testing.tiny_models import save_tiny_bert

WORDS = ["red", "green", "blue", "small", "large"]

#: train/loss per epoch and the final validation metrics of the run below (CPU, fp32)
STORED_TRAIN_LOSS = [2.11970583597819, 2.0498124758402505, 1.938108762105306]
STORED_VAL = {
    "val/loss": 1.828505516052246,
    "val/label/loss": 1.2431328296661377,
    "val/label/accuracy": 0.6875,
    "val/label/f1": 0.4166666865348816,
    "val/label/precision": 0.375,
    "val/label/recall": 0.5,
    "val/score/loss": 1.1707452535629272,
    "val/score/mae": 0.9351553916931152,
    "val/score/r2": -0.02027261257171631,
    "val/score/rmse": 1.0820097923278809,
    "val/skipped": 0.0,  # validation rows the data pipeline skipped
}


def write_rows(path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(count):
            colour, size = rng.choice(WORDS[:3]), rng.choice(WORDS[3:])
            x = [rng.uniform(-1, 1) for _ in range(4)]
            label = colour if x[0] > -0.5 else "none"
            handle.write(json.dumps({"text": f"a {size} {colour} box", "feats": x, "label": label, "score": x[1] * 2}) + "\n")


@pytest.mark.slow
def test_tiny_run_matches_stored_losses(tmp_path):
    bert = save_tiny_bert(tmp_path / "bert", WORDS + ["a", "box"], num_layers=1, max_length=16, seed=1)
    write_rows(tmp_path / "train.jsonl", 48, seed=0)
    write_rows(tmp_path / "val.jsonl", 16, seed=1)
    recipe = parse_recipe(
        {
            "name": "regression",
            "seed": 7,
            "encoders": {
                "text": {"type": "text_hf", "model": str(bert), "max_length": 16, "pooling": "mean", "lr": 5e-3},
                "feats": {"type": "vector", "input_dim": 4, "hidden_dim": 16, "output_dim": 16},
            },
            "fusion": {"type": "gated", "output_dim": 16},
            "tasks": {
                "label": {"type": "classification"},
                "score": {"type": "regression", "weight": 0.5},
            },
            "data": {"train": str(tmp_path / "train.jsonl"), "val": str(tmp_path / "val.jsonl"), "batch_size": 16},
            "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.01},
            "scheduler": {"name": "cosine", "warmup_steps": 2},
            "trainer": {"epochs": 3, "device": "cpu", "progress": "off", "tensorboard": "off"},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in one fixed order
    try:
        outcome = train(recipe, run_dir=tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["train/loss"]) for row in rows]
    val = {key: float(value) for key, value in rows[-1].items() if key.startswith("val/")}
    assert losses == pytest.approx(STORED_TRAIN_LOSS, rel=1e-4, abs=1e-6)
    assert val == pytest.approx(STORED_VAL, rel=1e-4, abs=1e-6)
    assert outcome.model_dir.is_dir()
