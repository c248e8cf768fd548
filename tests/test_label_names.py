"""``Task.label_names()`` is the one source of label names: a task whose vocabulary is stored under
another attribute name still gets them in labels.json, the export's label list and the keys of
``Predictor.predict_proba`` (they used to read an attribute literally named ``labels``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mmfuse import hookimpl
from mmfuse.artifact import save
from mmfuse.contracts import SampleError, Task
from mmfuse.predict import Predictor, load, probability_labels

GRADES = ["low", "mid", "high"]


class GradeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grades: list[str] = GRADES


class GradeTask(Task):
    """Classification whose vocabulary is called ``grades`` (no ``labels`` attribute anywhere)."""

    def __init__(self, config: GradeConfig, fused_dim: int, encoder_dims: dict[str, int]) -> None:
        super().__init__()
        self.grades = list(config.grades)
        self.head = nn.Linear(fused_dim, len(self.grades))

    def label_names(self) -> list[Any]:
        return list(self.grades)

    def forward(self, fused: Tensor, features: Any, present: Any) -> Tensor:
        return self.head(fused)

    def encode_target(self, value: Any) -> Tensor:
        if value not in self.grades:
            raise SampleError(f"unknown grade {value!r}")
        return torch.tensor(self.grades.index(value))

    def loss(self, outputs: Tensor, targets: Tensor | None) -> Tensor:
        return F.cross_entropy(outputs, targets)

    def build_metrics(self) -> Any:
        import torchmetrics

        return torchmetrics.MetricCollection({"accuracy": torchmetrics.classification.MulticlassAccuracy(len(self.grades))})

    def predict(self, outputs: Tensor) -> list[Any]:
        return [self.grades[i] for i in outputs.argmax(-1).tolist()]

    def probabilities(self, outputs: Tensor) -> Tensor:
        return outputs.softmax(-1)


class GradePlugin:
    @hookimpl
    def mmfuse_register_tasks(self, register) -> None:
        register("toy/grade", builder=GradeTask, config=GradeConfig)


RECIPE = {
    "encoders": {"feats": {"type": "vector", "input_dim": 3, "hidden_dim": 4, "output_dim": 4}},
    "fusion": {"type": "concat", "projection_dim": 4, "hidden_dims": [], "output_dim": 4, "dropout": 0.0},
    "tasks": {"grade": {"type": "toy/grade"}, "score": {"type": "regression"}},
}
SAMPLES = [{"feats": [0.1, 0.2, 0.3]}, {"feats": [1.0, -1.0, 0.5]}, {"feats": [2.0, 0.0, -0.5]}]


@pytest.fixture
def grade_folder(mmfuse_registry, tmp_path):
    from mmfuse.model import build_fused_model
    from mmfuse.recipe import parse_recipe

    registry = mmfuse_registry(("toygrade", GradePlugin()), installed=True)
    recipe = parse_recipe(RECIPE, registry)
    torch.manual_seed(0)
    model = build_fused_model(recipe, registry).eval()
    return save(model, tmp_path / "model", recipe, registry), model, recipe


def test_labels_json_and_predict_proba_use_label_names(grade_folder):
    folder, model, recipe = grade_folder
    assert json.loads((folder / "labels.json").read_text()) == {"grade": GRADES}
    for predictor in (Predictor(model, recipe), load(folder)):
        rows = predictor.predict_proba(SAMPLES)
        assert [list(row["grade"]) for row in rows] == [GRADES] * len(SAMPLES)
        assert [row["grade"] for row in predictor.predict(SAMPLES)] == [max(r["grade"], key=r["grade"].get) for r in rows]


def test_export_label_list_uses_label_names(grade_folder, tmp_path):
    from mmfuse.export import export_model

    folder, _, _ = grade_folder
    export_model(folder, tmp_path / "model.pt2", format="torch-export", example=SAMPLES[:2])
    info = json.loads((tmp_path / "model.pt2.json").read_text())
    assert info["labels"] == {"grade": GRADES}


def test_probability_keys_fall_back_to_indices_without_a_matching_vocabulary():
    class Unnamed(Task):
        pass

    class Named(Task):
        def label_names(self) -> list[Any]:
            return ["a", "b"]

    assert probability_labels(Unnamed(), 3) == [0, 1, 2]
    assert probability_labels(Named(), 2) == ["a", "b"]
    assert probability_labels(Named(), 3) == [0, 1, 2]
