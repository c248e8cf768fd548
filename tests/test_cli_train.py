"""`mmfuse train / eval / predict` end to end on a tiny generated dataset of real files."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmfuse.cli import main
from mmfuse.testing.media import write_corrupt_file, write_png
from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm

WORDS = ["cat", "dog", "bird", "tree"]


def write_dataset(folder: Path, rows: int = 24) -> None:
    """text + PNG image + a numeric vector per row; the label follows the text's first word."""
    lines = {"train": [], "val": []}
    for index in range(rows):
        word = WORDS[index % 4]
        image = write_png(folder / "img" / f"{index}.png", size=(16, 16), seed=index)
        row = {
            "text": f"{word} sat on the mat",
            "picture": str(image.relative_to(folder)),
            "features": [index % 4, 1.0],
            "label": "animal" if word != "tree" else "plant",
        }
        if index % 5 == 3:
            del row["picture"]  # a row may miss a modality
        lines["val" if index % 4 == 0 and index >= 12 else "train"].append(json.dumps(row))
    for split, rows_ in lines.items():
        (folder / f"{split}.jsonl").write_text("\n".join(rows_) + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A recipe folder with data and tiny local models (written once for this module)."""
    root = tmp_path_factory.mktemp("project")
    write_dataset(root / "data")
    bert = save_tiny_bert(root / "models" / "bert")
    vit = save_tiny_timm(root / "models" / "vit", "test_vit", image_size=32)
    recipe = {
        "name": "tiny",
        "data": {"train": "data/train.jsonl", "val": "data/val.jsonl", "batch_size": 8},
        "encoders": {
            "text": {"type": "text_hf", "model": str(bert), "max_length": 16},
            "image": {"type": "image_timm", "model": f"local-dir:{vit}", "column": "picture"},
            "features": {"type": "vector", "input_dim": 2, "hidden_dim": 8, "output_dim": 8},
        },
        "fusion": {"type": "concat", "projection_dim": 16, "hidden_dims": [16], "output_dim": 16},
        "tasks": {"label": {"type": "classification"}},
        "trainer": {"epochs": 1, "device": "cpu"},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def mmfuse(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmfuse", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_train_predict_eval_end_to_end_in_subprocesses(project):
    run_dir = project / "runs" / "e2e"
    result = mmfuse("train", "recipe.yaml", "trainer.epochs=2", "data.num_workers=1", "--run-dir", str(run_dir), cwd=project)
    assert result.returncode == 0, result.stderr
    # the run folder: resolved recipe, metrics (one row per epoch), checkpoints, final model
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["tasks"]["label"]["labels"] == ["animal", "plant"]
    assert resolved["trainer"]["epochs"] == 2
    assert Path(resolved["data"]["train"]).is_absolute() and Path(resolved["data"]["train"]).is_file()
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert all(float(row["train/loss"]) > 0 and "val/label/accuracy" in row for row in rows)
    assert any((run_dir / "checkpoints").iterdir())
    assert (run_dir / "model" / "mmfuse.json").is_file()

    preds = project / "preds.jsonl"
    result = mmfuse("predict", str(run_dir), "--data", "data/val.jsonl", "--out", str(preds), "--probabilities", cwd=project)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    val_lines = len((project / "data" / "val.jsonl").read_text().splitlines())
    assert [r["line"] for r in records] == list(range(1, val_lines + 1))
    assert all(r["label"] in ("animal", "plant") for r in records)
    assert all(abs(sum(r["label_probabilities"].values()) - 1) < 1e-4 for r in records)

    result = mmfuse("eval", str(run_dir), "--data", "data/val.jsonl", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "label/accuracy" in result.stdout and f"{val_lines} rows evaluated, 0 skipped" in result.stdout


def test_skip_mode_trains_and_reports_the_bad_samples_per_epoch(project, tmp_path, capsys):
    rows = (project / "data" / "train.jsonl").read_text().splitlines()
    write_corrupt_file(project / "data" / "img" / "corrupt.png")
    bad = [
        {"text": "cat sat", "picture": "img/missing.png", "features": [0, 1], "label": "animal"},
        {"text": "dog sat", "picture": "img/corrupt.png", "features": [1, 1], "label": "animal"},
    ]
    manifest = project / "data" / "with_bad.jsonl"
    manifest.write_text("\n".join(rows + [json.dumps(row) for row in bad]) + "\n")
    run_dir = tmp_path / "run"
    code = main(["train", str(project / "recipe.yaml"), "data.train=data/with_bad.jsonl", "data.on_bad_sample=skip",
                 "trainer.epochs=2", "--run-dir", str(run_dir)])
    assert code == 0
    with open(run_dir / "metrics.csv", newline="") as handle:
        assert [row["train/skipped"] for row in csv.DictReader(handle)] == ["2", "2"]
    assert "skipped 2 bad sample(s)" in capsys.readouterr().out


def test_bad_data_exits_2_naming_manifest_line_and_column(project, capsys):
    manifest = project / "data" / "missing_file.jsonl"
    manifest.write_text(json.dumps({"text": "cat", "picture": "img/nope.png", "features": [0, 1], "label": "animal"}) + "\n"
                        + json.dumps({"text": "tree", "features": [3, 1], "label": "plant"}) + "\n")
    code = main(["train", str(project / "recipe.yaml"), "data.train=data/missing_file.jsonl", "data.val=null"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {manifest} line 1, column 'picture': file not found" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def trained_run(project, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(project / "recipe.yaml"), "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_unknown_label_at_evaluation_exits_2(project, trained_run, capsys):
    manifest = project / "data" / "unknown_label.jsonl"
    # an evaluation file may lack a whole modality (no 'picture' column here)
    manifest.write_text(
        json.dumps({"text": "cat", "features": [0, 1], "label": "animal"}) + "\n"
        + json.dumps({"text": "cat", "features": [0, 1], "label": "fungus"}) + "\n"
    )
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--data", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert f"{manifest} line 2, column 'label': bad target for task 'label': unknown label 'fungus'" in err
    # with skipping, the row is dropped and counted
    assert main(["eval", str(trained_run), "--data", str(manifest), "--on-bad-sample", "skip"]) == 0
    assert "1 rows evaluated, 1 skipped" in capsys.readouterr().out


def test_predict_marks_skipped_rows_and_keeps_manifest_order(project, trained_run, tmp_path, capsys):
    manifest = tmp_path / "new.jsonl"
    write_png(tmp_path / "a.png", size=(16, 16))
    manifest.write_text(
        json.dumps({"text": "tree", "picture": "a.png"}) + "\n"
        + json.dumps({"text": "dog", "picture": "gone.png"}) + "\n"
        + json.dumps({"features": [1, 1]}) + "\n"
    )
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(trained_run), "--data", str(manifest), "--out", str(out), "--on-bad-sample", "skip"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert records[0]["label"] in ("animal", "plant") and records[2]["label"] in ("animal", "plant")
    assert "file not found" in records[1]["skipped"] and "line 2, column 'picture'" in records[1]["skipped"]


def test_resume_continues_the_run_in_its_folder(project, trained_run, tmp_path, capsys):
    run_dir = tmp_path / "resumed"
    shutil.copytree(trained_run, run_dir)
    assert main(["train", str(project / "recipe.yaml"), "trainer.epochs=2", "--resume", str(run_dir)]) == 0
    with open(run_dir / "metrics.csv", newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert main(["train", str(project / "recipe.yaml"), "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err


def test_bad_recipe_override_exits_2(project, capsys):
    assert main(["train", str(project / "recipe.yaml"), "trainer.epoch=2"]) == 2
    assert "Did you mean 'epochs'" in capsys.readouterr().err
