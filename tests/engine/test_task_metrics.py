"""Each task's loss and metrics are reported under the task's name, in the logs and in FitResult."""

from __future__ import annotations

import csv

import pytest
import torch

from mmfuse.engine.trainer import Trainer
from tests.engine.tiny import SyntheticRows, TinyCollate, tiny_model, tiny_recipe

TASKS = {
    "label": {"type": "mmfuse/classification", "labels": ["a", "b", "c"], "weight": 2.0},
    "score": {"type": "mmfuse/regression", "target": "value"},
}


class TwoTaskCollate(TinyCollate):
    """Adds the regression target ``score``: the row's third feature."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.score = model.tasks["score"]

    def __call__(self, rows):
        batch = super().__call__(rows)
        batch["targets"]["score"] = torch.stack([self.score.encode_target(row["x"][2]) for row in rows])
        return batch


def fit(tmp_path, **trainer):
    recipe = tiny_recipe(tasks=TASKS, trainer={"progress": "off", "tensorboard": "off", **trainer})
    model = tiny_model(recipe)
    run = Trainer(model, recipe, SyntheticRows(32), TwoTaskCollate(model), val_dataset=SyntheticRows(8, seed=1), run_dir=tmp_path)
    return run, run.fit()


def test_two_tasks_report_their_metrics_under_their_names(tmp_path):
    trainer, result = fit(tmp_path, epochs=1)
    expected = {"val/loss", "val/label/loss", "val/label/accuracy", "val/label/f1",
                "val/score/loss", "val/score/mae", "val/score/rmse", "val/score/r2"}
    assert expected <= set(result.metrics)
    assert not any(key.startswith("val/") and key.count("/") == 2 and key.split("/")[1] not in TASKS for key in result.metrics)
    # the total is the recipe's weighted sum of the per-task losses
    total = 2.0 * result.metrics["val/label/loss"] + result.metrics["val/score/loss"]
    assert result.metrics["val/loss"] == pytest.approx(total, rel=1e-5)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["val/score/mae"]) == pytest.approx(result.metrics["val/score/mae"])
    assert float(row["val/label/accuracy"]) == pytest.approx(result.metrics["val/label/accuracy"])


def test_max_steps_mid_epoch_still_reports_validation_metrics(tmp_path):
    _, result = fit(tmp_path, epochs=3, max_steps=5)  # 8 steps per epoch: stops inside the first
    assert result.stop_reason == "max_steps" and result.global_step == 5 and result.history == []
    assert {"val/loss", "val/label/accuracy", "val/score/mae"} <= set(result.metrics)
    evals = (tmp_path / "evals.csv").read_text().splitlines()
    assert len(evals) == 2 and evals[1].split(",")[1] == "5"
