"""`mmfuse train / eval / predict` on extractive QA and captioning recipes with tiny local models:
the engine trains the new tasks, validation reports their metrics, the run's model folder
predicts answers with character spans and captions with the decoding flags."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from mmfuse.cli import main

CONTEXT = "the cat sat on the mat . john lives in paris . a dog is on a red ball"
QA = [("where is the cat", "the mat"), ("where is john", "paris"), ("where is the dog", "a red ball")]
CAPTIONS = {0: "a cat on a mat", 1: "a dog with a red ball", 2: "a quiet sound"}


def write_jsonl(file: Path, rows: list[dict]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))


def metrics_of(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def last_value(rows: list[dict], key: str) -> float:
    values = [float(row[key]) for row in rows if row.get(key) not in (None, "")]
    assert values, f"no '{key}' in metrics.csv; columns: {sorted(rows[0]) if rows else []}"
    return values[-1]


@pytest.mark.slow
def test_extractive_qa_trains_evaluates_and_predicts_spans(tiny_bert, tmp_path, capsys):
    rows = [
        {"qa": {"question": q, "context": CONTEXT}, "answer": {"text": a, "answer_start": CONTEXT.index(a)}} for q, a in QA
    ]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows * 8)
    write_jsonl(tmp_path / "data" / "val.jsonl", rows)
    recipe = {
        "name": "qa",
        "data": {"train": "data/train.jsonl", "val": "data/val.jsonl", "batch_size": 6},
        "encoders": {"text": {"type": "text_windows", "model": str(tiny_bert), "max_length": 16, "stride": 3, "column": "qa"}},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [8], "output_dim": 8, "dropout": 0.0},
        "tasks": {"answer": {"type": "qa", "dropout": 0.0, "max_answer_tokens": 5}},
        "optimizer": {"name": "adamw", "lr": 3.0e-3, "weight_decay": 0.0},
        "trainer": {"epochs": 20, "device": "cpu"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "runs" / "qa"
    assert main(["train", str(tmp_path / "recipe.yaml"), "--run-dir", str(run)]) == 0
    history = metrics_of(run)
    assert last_value(history, "val/answer/exact_match") == pytest.approx(1.0)
    assert last_value(history, "val/answer/f1") == pytest.approx(1.0)

    assert main(["eval", str(run), "--data", str(tmp_path / "data" / "val.jsonl")]) == 0
    assert "exact_match" in capsys.readouterr().out

    out = tmp_path / "answers.jsonl"
    write_jsonl(tmp_path / "ask.jsonl", [{"qa": row["qa"]} for row in rows])
    assert main(["predict", str(run), "--data", str(tmp_path / "ask.jsonl"), "--out", str(out)]) == 0
    answers = [json.loads(line)["answer"] for line in out.read_text().splitlines()]
    assert [a["text"] for a in answers] == [a for _, a in QA]
    assert [CONTEXT[a["start"] : a["end"]] for a in answers] == [a for _, a in QA]


@pytest.mark.slow
def test_captioning_trains_and_predict_decodes_with_the_flags(tiny_gpt2, tmp_path, capsys):
    rows = [{"scene": [float(i == k) for i in range(3)], "caption": text} for k, text in CAPTIONS.items()]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows * 8)
    write_jsonl(tmp_path / "data" / "val.jsonl", rows)
    recipe = {
        "name": "captions",
        "data": {"train": "data/train.jsonl", "val": "data/val.jsonl", "batch_size": 24},
        "encoders": {"scene": {"type": "vector", "input_dim": 3, "hidden_dim": 8, "output_dim": 8}},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [8], "output_dim": 8, "dropout": 0.0},
        "tasks": {"caption": {"type": "captioning", "model": str(tiny_gpt2), "prefix_length": 2, "max_new_tokens": 24}},
        "optimizer": {"name": "adamw", "lr": 1.0e-2, "weight_decay": 0.0},
        "trainer": {"epochs": 80, "device": "cpu", "eval_every_steps": 40},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "runs" / "captions"
    assert main(["train", str(tmp_path / "recipe.yaml"), "--run-dir", str(run)]) == 0
    history = metrics_of(run)
    assert last_value(history, "val/caption/bleu") == pytest.approx(1.0)
    assert last_value(history, "val/caption/rougeL") == pytest.approx(1.0)
    assert last_value(history, "val/caption/perplexity") < 1.5

    write_jsonl(tmp_path / "scenes.jsonl", [{"scene": row["scene"]} for row in rows])
    out = tmp_path / "captions.jsonl"
    assert main(["predict", str(run), "--data", str(tmp_path / "scenes.jsonl"), "--out", str(out), "--num-beams", "2"]) == 0
    assert [json.loads(line)["caption"] for line in out.read_text().splitlines()] == list(CAPTIONS.values())
    assert main(["predict", str(run), "--data", str(tmp_path / "scenes.jsonl"), "--out", str(out), "--max-new-tokens", "1"]) == 0
    assert all(len(json.loads(line)["caption"]) < 6 for line in out.read_text().splitlines())


@pytest.mark.slow
def test_demo_captioning_variant_builds_trains_a_step_and_decodes(tmp_path):
    """The demo's captioning variant on a small copy of its data (the full run is `mmfuse demo
    --captioning`): the recipe validates, the model trains and writes one caption per sample."""
    import torch

    from mmfuse.data.collate import BatchCollator
    from mmfuse.data.dataset import build_dataset
    from mmfuse.data.manifest import read_manifest
    from mmfuse.demo.dataset import describe_cues
    from mmfuse.demo.runner import captioning_recipe, default_recipe_path, demo_overrides, prepare_demo
    from mmfuse.model import build_fused_model
    from mmfuse.predict import Predictor
    from mmfuse.recipe import load_recipe

    assert describe_cues({"text": True, "image": False, "audio": True, "video": False}) == (
        "blue blob, high tone, grey square, alarm text"
    )
    prepare_demo(tmp_path, train_rows=8, val_rows=4)
    recipe = captioning_recipe(load_recipe(default_recipe_path(), demo_overrides(tmp_path)), tmp_path)
    assert list(recipe.tasks) == ["label", "caption"] and recipe.tasks["caption"].target == "caption"
    from mmfuse.data.targets import fit_task_targets

    train = read_manifest(tmp_path / "data" / "train.jsonl")
    fit_task_targets(recipe, train)  # the classification labels, as mmfuse train does
    torch.manual_seed(0)
    model = build_fused_model(recipe)
    dataset = build_dataset(train, recipe, model)
    preprocessors = {name: encoder.preprocessor() for name, encoder in model.encoders.items()}
    batch = BatchCollator(preprocessors, model.tasks)([dataset[i] for i in range(4)])
    loss, _ = model.compute_loss(model(batch), batch["targets"])
    loss.backward()
    projectors = model.tasks["caption"].projectors
    assert set(projectors) == {"text", "image", "audio", "video"}  # every encoder's tokens, LLaVA-style
    assert torch.isfinite(loss) and all(p.weight.grad.abs().sum() > 0 for p in projectors.values())
    row = json.loads((tmp_path / "data" / "val.jsonl").read_text().splitlines()[0])
    sample = {**row, **{key: str(tmp_path / "data" / row[key]) for key in ("image", "audio", "video")}}
    texts = Predictor(model.eval(), recipe).generate([sample], max_new_tokens=3)
    assert len(texts) == 1 and isinstance(texts[0], str)
