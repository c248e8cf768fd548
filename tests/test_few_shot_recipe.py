"""``recipes/few_shot.yaml`` trains on the demo data through the CLI, as the prototype head and,
with one override, as the linear probe; the saved model predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmfuse.cli import main
from mmfuse.demo.runner import demo_overrides, prepare_demo

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "few_shot.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("few-shot-demo")
    prepare_demo(out, train_rows=48, val_rows=16)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("head", ["prototype", "classification"])
def test_the_few_shot_recipe_trains_and_predicts(demo, tmp_path, capsys, head):
    import mmfuse

    run_dir = tmp_path / "run"
    code = main([
        "train", str(RECIPE), *demo_overrides(demo), "data.shots_per_class=2", "trainer.epochs=2",
        f"tasks.label.type={head}", "--run-dir", str(run_dir),
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "few-shot: data.shots_per_class=2 (classes from column 'label', seed 0) kept 6 of 48 training rows" in out
    assert "feature cache: serving frozen encoder(s) text, image, audio, video" in out
    assert ("tasks.label: prototypes from 6 training rows (3 classes)" in out) == (head == "prototype")
    assert json.loads((run_dir / "few_shot.json").read_text())["kept"] == {"high": 2, "low": 2, "medium": 2}
    row = json.loads((demo / "data" / "val.jsonl").read_text().splitlines()[0])
    folder = demo / "data"
    sample = {key: str(folder / row[key]) if key in ("image", "audio", "video") else row[key] for key in ("text", "image", "audio", "video")}
    prediction = mmfuse.load(run_dir).predict([sample])[0]["label"]
    assert prediction in {"low", "medium", "high"}


@pytest.mark.slow
def test_the_benchmark_script_prints_the_table(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "few_shot.py"
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--shots", "1", "2", "--epochs", "1",
         "--train-rows", "48", "--val-rows", "16"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "| k per class | prototype | linear probe |" in lines
    assert sum(line.startswith(("| 1 | 0.", "| 2 | 0.")) for line in lines) == 2
