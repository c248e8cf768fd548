"""``mmfuse/prototype``: prototypes are the class means of the training rows' fused vectors (by
hand), predictions are the nearest prototype, the engine keeps them current, they survive the
model folder, and a few-shot run works end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mmfuse.engine.trainer import Trainer
from mmfuse.recipe import parse_recipe
from mmfuse.run import prepare, train
from mmfuse.testing import check_task
from mmfuse_plugins.tasks.prototype_refresh import PrototypeRefresh

CENTRES = {"a": [2.0, 0.0, 0.0], "b": [0.0, 2.0, 0.0], "c": [0.0, 0.0, 2.0]}


def _write(path: Path, per_class: int, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for label, centre in CENTRES.items():
        for _ in range(per_class):
            x = torch.tensor(centre) + 0.8 * torch.randn(3, generator=generator)
            rows.append({"x": [round(v, 4) for v in x.tolist()], "label": label})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return {"train": _write(tmp_path / "train.jsonl", 6, seed=0), "val": _write(tmp_path / "val.jsonl", 4, seed=1)}


def _recipe(files: dict[str, Path], tmp_path: Path, *overrides: str, **task: Any):
    raw = {
        "seed": 2,
        "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(files["train"]), "val": str(files["val"]), "batch_size": 4},
        "encoders": {"x": {"type": "mmfuse/vector", "input_dim": 3, "hidden_dim": 8, "output_dim": 8}},
        "fusion": {"type": "mmfuse/concat", "projection_dim": 8, "hidden_dims": [], "output_dim": 6, "dropout": 0.0},
        "tasks": {"label": {"type": "prototype", **task}},
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": 2, "progress": "off", "tensorboard": "off", "device": "cpu"},
    }
    return parse_recipe(raw, overrides=list(overrides))


def _trainer(recipe, tmp_path: Path) -> Trainer:
    prepared = prepare(recipe)
    return Trainer.from_recipe(
        recipe, prepared.model, prepared.train, prepared.collate, val_dataset=prepared.val, run_dir=tmp_path / "run"
    )


def _fused_by_hand(trainer: Trainer, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row alone through encode + fusion in eval mode: fused vectors [N, D] and labels [N]."""
    model = trainer.model
    model.eval()
    vectors, labels = [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            batch = trainer.collate([dataset[index]])
            features, present = model.encode(batch)
            vectors.append(model.fusion(features, present)[0])
            labels.append(int(batch["targets"]["label"][0]))
    model.train()
    return torch.stack(vectors), torch.tensor(labels)


def _means(vectors: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.stack([vectors[labels == c].mean(0) for c in range(classes)])


def _refresher(trainer: Trainer) -> PrototypeRefresh:
    return next(c for c in trainer.callbacks if isinstance(c, PrototypeRefresh))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_prototypes_are_class_means_and_predictions_the_nearest_prototype(files, tmp_path, distance):
    trainer = _trainer(_recipe(files, tmp_path, distance=distance), tmp_path)
    task = trainer.model.tasks["label"]
    assert int(task.prototype_rows.sum()) == 0  # nothing before the engine's pass
    _refresher(trainer).refresh(trainer)
    vectors, labels = _fused_by_hand(trainer, trainer.train_dataset)
    compared = F.normalize(vectors, dim=-1) if distance == "cosine" else vectors
    torch.testing.assert_close(task.prototypes, _means(compared, labels, 3), atol=1e-5, rtol=1e-5)
    assert task.prototype_rows.tolist() == [6.0, 6.0, 6.0]

    val_vectors, _ = _fused_by_hand(trainer, trainer.val_dataset)
    if distance == "cosine":
        nearest = (F.normalize(val_vectors, dim=-1) @ F.normalize(task.prototypes, dim=-1).T).argmax(-1)
    else:
        nearest = torch.cdist(val_vectors, task.prototypes).argmin(-1)
    trainer.model.eval()
    with torch.no_grad():
        batch = trainer.collate([trainer.val_dataset[i] for i in range(len(trainer.val_dataset))])
        logits = trainer.model(batch)["label"]
    assert logits.argmax(-1).tolist() == nearest.tolist()
    assert task.predict(logits) == [["a", "b", "c"][i] for i in nearest.tolist()]


def test_a_class_without_training_rows_is_never_predicted(files, tmp_path):
    trainer = _trainer(_recipe(files, tmp_path, labels=["a", "b", "c", "d"]), tmp_path)
    task = trainer.model.tasks["label"]
    _refresher(trainer).refresh(trainer)
    assert task.prototype_rows.tolist() == [6.0, 6.0, 6.0, 0.0]
    trainer.model.eval()
    with torch.no_grad():
        batch = trainer.collate([trainer.val_dataset[i] for i in range(len(trainer.val_dataset))])
        probabilities = task.probabilities(trainer.model(batch)["label"])
    assert float(probabilities[:, 3].max()) < 1e-6


def test_the_fit_keeps_prototypes_current_with_the_trained_fusion(files, tmp_path):
    trainer = _trainer(_recipe(files, tmp_path), tmp_path)
    result = trainer.fit()
    # fit start, then the last step of each of the 2 epochs (fusion and encoder train)
    assert _refresher(trainer).refreshes == 3
    vectors, labels = _fused_by_hand(trainer, trainer.train_dataset)
    task = trainer.model.tasks["label"]
    torch.testing.assert_close(task.prototypes, _means(F.normalize(vectors, dim=-1), labels, 3), atol=1e-5, rtol=1e-5)
    assert result.metrics["val/label/accuracy"] > 0.5  # three well separated clusters


def test_with_everything_upstream_frozen_only_the_temperature_trains_and_one_pass_suffices(files, tmp_path):
    recipe = _recipe(files, tmp_path, "encoders.x.freeze=true", "data.feature_cache=auto")
    prepared = prepare(recipe)
    prepared.model.fusion.requires_grad_(False)  # a frozen metric space: nearest class mean on fixed vectors
    trainer = Trainer.from_recipe(recipe, prepared.model, prepared.train, prepared.collate, val_dataset=prepared.val, run_dir=tmp_path / "run")
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable == ["tasks.label.log_scale"]
    before = trainer.model.tasks["label"].log_scale.item()
    trainer.fit()
    assert _refresher(trainer).refreshes == 1
    assert trainer.model.tasks["label"].log_scale.item() != before


def test_save_load_round_trip_predicts_identically(files, tmp_path):
    import mmfuse
    from mmfuse.artifact import save

    recipe = _recipe(files, tmp_path, "trainer.epochs=1")
    trainer = _trainer(recipe, tmp_path)
    trainer.fit()
    model = trainer.model.eval()
    rows = [json.loads(line) for line in files["val"].read_text().splitlines()]
    with torch.no_grad():
        batch = trainer.collate([trainer.val_dataset[i] for i in range(len(trainer.val_dataset))])
        probabilities = model.tasks["label"].probabilities(model(batch)["label"])
    save(model, tmp_path / "model", recipe)
    predictor = mmfuse.load(tmp_path / "model")
    loaded = predictor.module.tasks["label"]
    assert torch.equal(loaded.prototypes, model.tasks["label"].prototypes)
    assert loaded.prototype_rows.tolist() == [6.0, 6.0, 6.0]
    samples = [{"x": row["x"]} for row in rows]
    expected = model.tasks["label"].predict(probabilities)
    assert [p["label"] for p in predictor.predict(samples)] == expected
    proba = predictor.predict_proba(samples)
    for row, values in enumerate(proba):
        assert [values["label"][label] for label in "abc"] == pytest.approx(probabilities[row].tolist(), abs=1e-6)


@pytest.mark.slow
def test_onnx_export_matches_eager(files, tmp_path):
    from mmfuse.export import export_model

    outcome = train(_recipe(files, tmp_path, "trainer.epochs=1"), run_dir=tmp_path / "run")
    rows = [json.loads(line) for line in files["val"].read_text().splitlines()]
    export_model(outcome.model_dir, tmp_path / "model.onnx", format="onnx", example=[{"x": row["x"]} for row in rows])
    info = json.loads((tmp_path / "model.onnx.json").read_text())
    assert info["labels"] == {"label": ["a", "b", "c"]}
    assert info["parity_max_abs_diff"] <= 1e-4


def test_a_few_shot_prototype_run_end_to_end(files, tmp_path, capsys):
    outcome = train(_recipe(files, tmp_path, "data.shots_per_class=2"), run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "few-shot: data.shots_per_class=2" in out and "tasks.label: prototypes from 6 training rows (3 classes)" in out
    assert {"val/label/accuracy", "val/label/f1"} <= set(outcome.fit.metrics)
    assert (outcome.run_dir / "model").is_dir() and (outcome.run_dir / "few_shot.json").is_file()
    report = (outcome.run_dir / "report.html").read_text()
    assert "Task label: classes" in report and "few-shot training rows" in report


def test_prototype_passes_the_conformance_kit(tmp_path):
    report = check_task("mmfuse/prototype", {"distance": "euclidean"}, folder=tmp_path)
    assert "save_load" in report.passed


def test_unimodal_aux_heads_are_refused_they_would_never_get_prototypes(files, tmp_path):
    from mmfuse.model import build_fused_model

    recipe = _recipe(files, tmp_path, "tasks.label.unimodal_aux={weight: 0.3}", labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="tasks.label.unimodal_aux: task type 'mmfuse/prototype'.*remove unimodal_aux"):
        build_fused_model(recipe)
