"""Per-modality diagnostics (numbers checked by hand) and one end-to-end run with every
imbalance option: metrics per modality, the table, modalities.json, the saved model."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mmfuse.balance.diagnostics import format_table, modality_report, only_modality
from tests.balance import tiny


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return (logits.argmax(-1) == target).float().mean().item()


def test_report_numbers_by_hand():
    import contextlib

    model = tiny.model(tiny.recipe(task={"unimodal_aux": {}}))
    batches = [tiny.batch(size=6, seed=s) for s in range(3)]
    report = modality_report(model, [dict(b) for b in batches], torch.device("cpu"), contextlib.nullcontext)
    assert model.training, "the model's mode is restored"
    model.eval()
    with torch.no_grad():
        entry = report["tasks"]["label"]
        target = torch.cat([b["targets"]["label"] for b in batches])
        full = torch.cat([model(b)["label"] for b in batches])
        assert entry["all_modalities"]["accuracy"] == pytest.approx(accuracy(full, target))
        for name in ("left", "right"):
            rows = torch.cat([b["present"][name] for b in batches])
            alone = torch.cat([model(only_modality(b, name))["label"] for b in batches])
            head = torch.cat([model(b).unimodal[("label", name)].outputs for b in batches])
            row = entry["modalities"][name]
            assert row["rows"] == int(rows.sum()) == 12
            assert row["fused"]["accuracy"] == pytest.approx(accuracy(full[rows], target[rows]))
            assert row["fused_only"]["accuracy"] == pytest.approx(accuracy(alone[rows], target[rows]))
            assert row["unimodal_head"]["accuracy"] == pytest.approx(accuracy(head[rows], target[rows]))
    table = format_table(report)
    assert "per-modality accuracy of task 'label'" in table and "(all rows)" in table


def test_only_modality_masks_every_other_encoder():
    batch = tiny.batch()
    masked = only_modality(batch, "left")
    assert torch.equal(masked["present"]["left"], batch["present"]["left"])
    assert not masked["present"]["right"].any()
    assert batch["present"]["right"].any(), "the caller's batch was modified"


def write_manifests(folder, rows: int, seed: int):
    rng = random.Random(seed)
    lines = []
    for index in range(rows):
        label = rng.randrange(3)
        left = [label + rng.gauss(0, 0.3)] + [rng.gauss(0, 1) for _ in range(tiny.DIM - 1)]
        right = [rng.gauss(0, 1) for _ in range(tiny.DIM - 1)] + [label - rng.gauss(0, 0.3)]
        has_left, has_right = index % 3 != 0, index % 3 != 1
        lines.append({"left": left if has_left else None, "right": right if has_right else None, "label": tiny.LABELS[label]})
    path = folder / f"rows{seed}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path, sum(line["left"] is not None for line in lines)


@pytest.mark.slow
def test_a_run_with_every_option_reports_each_modality(tmp_path, capsys):
    import mmfuse
    from mmfuse.artifact import load_model
    from mmfuse.run import train

    train_path, _ = write_manifests(tmp_path, 48, seed=0)
    val_path, val_left = write_manifests(tmp_path, 21, seed=1)
    recipe = tiny.recipe(
        fusion={"modality_dropout": {"p": 0.3}},
        task={"unimodal_aux": {"weight": 0.3}},
        trainer={"epochs": 2, "gradient_modulation": {"alpha": 0.5}, "modality_lr": {}},
        data={"train": str(train_path), "val": str(val_path)},
    )
    outcome = train(recipe, run_dir=tmp_path / "run")

    metrics = outcome.fit.metrics
    assert {"val/label/accuracy", "val/label/left/accuracy", "val/label/right/accuracy"} <= set(metrics)
    report = json.loads((tmp_path / "run" / "modalities.json").read_text())
    left = report["tasks"]["label"]["modalities"]["left"]
    assert report["rows"] == 21 and left["rows"] == val_left == 14
    assert left["unimodal_head"]["accuracy"] == pytest.approx(metrics["val/label/left/accuracy"])
    assert "per-modality accuracy of task 'label'" in capsys.readouterr().out

    # the auxiliary heads are dropped at save (keep_at_save is off): the folder loads without them
    model, saved = load_model(outcome.model_dir)
    assert model.unimodal_heads is None and saved.tasks["label"].unimodal_aux is None
    predictions = mmfuse.load(outcome.model_dir).predict([{"left": [0.0] * tiny.DIM}, {"right": [1.0] * tiny.DIM}])
    assert [set(p) for p in predictions] == [{"label"}, {"label"}]


def test_single_encoder_runs_write_no_diagnostics(tmp_path):
    from mmfuse.run import train

    train_path, _ = write_manifests(tmp_path, 12, seed=0)
    lines = [json.loads(line) for line in train_path.read_text().splitlines()]
    only_left = tmp_path / "left.jsonl"
    only_left.write_text("".join(json.dumps({"left": l["left"], "label": l["label"]}) + "\n" for l in lines if l["left"]))
    recipe = tiny.recipe(encoders=("left",), data={"train": str(only_left), "val": str(only_left)})
    train(recipe, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "modalities.json").exists()


def test_no_task_with_targets_means_no_diagnostics(tmp_path):
    """A contrastive-only recipe has nothing to score per modality: the fit ends normally."""
    from mmfuse.balance.diagnostics import ModalityDiagnostics
    from types import SimpleNamespace

    raw = tiny.recipe().to_dict()
    raw["tasks"] = {"align": {"type": "mmfuse/contrastive", "encoders": ["left", "right"], "embed_dim": 4}}
    from mmfuse.recipe import parse_recipe

    model = tiny.model(parse_recipe(raw))
    trainer = SimpleNamespace(model=model, val_dataset=[1], run_dir=tmp_path)
    ModalityDiagnostics().on_fit_end(trainer, SimpleNamespace(stop_reason="completed"))
    assert not (tmp_path / "modalities.json").exists()
