"""Compression: int8 post-training quantization of a model folder (torchao) and magnitude pruning
as a training stage followed by fine-tuning (torch.nn.utils.prune)."""

from __future__ import annotations

import json
import random

import pytest
import torch

import mmfuse
from mmfuse.cli import main
from mmfuse.compression import PruningConfig
from mmfuse.compression.pruning import compute_masks, prunable_layers, sparsity
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import parse_recipe
from mmfuse.run import train

pytest.importorskip("torchao", reason="compression tests need torchao (the 'compress' extra)")

RECIPE = {
    "name": "compress",
    "seed": 0,
    "encoders": {
        "a": {"type": "vector", "input_dim": 8, "output_dim": 64},
        "b": {"type": "vector", "input_dim": 4, "output_dim": 64},
    },
    "fusion": {"type": "concat", "output_dim": 128},
    "tasks": {"label": {"type": "classification", "hidden_dim": 128}},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "trainer": {"epochs": 6, "progress": "off", "tensorboard": "off"},
}


def write_data(folder, rows: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        label = rng.choice(["x", "y", "z"])
        centre = {"x": -1.0, "y": 0.0, "z": 1.0}[label]
        lines.append(
            json.dumps(
                {
                    "a": [centre + rng.gauss(0, 0.4) for _ in range(8)],
                    "b": [rng.gauss(0, 1) for _ in range(4)],
                    "label": label,
                }
            )
        )
    path = folder / f"data-{seed}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compress")
    raw = dict(RECIPE, data={"train": write_data(folder, 96, 1), "val": write_data(folder, 48, 2), "batch_size": 16})
    recipe = parse_recipe(raw, load_registry())
    outcome = train(recipe, run_dir=folder / "run", registry=load_registry())
    return outcome, folder / "data-2.jsonl"


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight-only"])
def test_quantize_writes_a_loadable_folder_and_a_measured_report(trained, method, capsys):
    outcome, manifest = trained
    out = outcome.run_dir / f"q-{method}"
    assert main(["quantize", str(outcome.run_dir), "--data", str(manifest), "--method", method, "--out", str(out), "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "linear layers quantized" in printed and "label/accuracy" in printed
    report = json.loads(out.with_name(out.name + ".json").read_text())
    assert report["method"] == method and report["rows"] == 48
    assert len(report["modules"]) >= 4  # two encoder projections, the fusion MLP, the task head
    # int8 weights: the weights file shrinks (scales and headers keep it above a quarter)
    assert report["quantized_bytes"] < 0.6 * report["float_bytes"]
    assert abs(report["metric_changes"]["label/accuracy"]) <= 0.05
    assert report["float_ms"] > 0 and report["quantized_ms"] > 0

    float_predictor, quantized_predictor = mmfuse.load(outcome.run_dir), mmfuse.load(out)
    # the loaded model really runs int8 layers (torchao tensor subclasses), as many as measured
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    layers = [m for m in quantized_predictor.module.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(is_traceable_wrapper_subclass(m.weight) for m in layers) == len(report["modules"])
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    floats = float_predictor.predict_proba(rows)
    quants = quantized_predictor.predict_proba(rows)
    worst = max(abs(f["label"][k] - q["label"][k]) for f, q in zip(floats, quants) for k in f["label"])
    assert worst < 0.05, worst
    agree = sum(f["label"] == q["label"] for f, q in zip(float_predictor.predict(rows), quantized_predictor.predict(rows)))
    assert agree >= 0.95 * len(rows)


def test_a_loaded_quantized_folder_predicts_exactly_what_was_measured(trained, tmp_path):
    from mmfuse.artifact import load_model, save
    from mmfuse.compression.quantize import quantize_model
    from mmfuse.predict import Predictor

    outcome, manifest = trained
    model, recipe = load_model(outcome.run_dir)
    quantize_model(model, "int8-dynamic")
    save(model, tmp_path / "q", recipe, load_registry())
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:10]
    direct = Predictor(model, recipe).predict_proba(rows)
    loaded = mmfuse.load(tmp_path / "q").predict_proba(rows)
    assert direct == loaded


def test_quantize_reports_bad_input_with_exit_2(trained, tmp_path, capsys):
    outcome, _ = trained
    assert main(["quantize", str(tmp_path / "nowhere"), "--data", str(tmp_path / "x.jsonl")]) == 2


def test_masks_follow_the_requested_method_and_amount():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.ReLU(), torch.nn.Linear(10, 6))
    for method, amount in [("magnitude", 0.3), ("global", 0.6), ("structured", 0.5)]:
        copy = torch.nn.Sequential(*[m for m in model])  # same modules: reset below
        copy.load_state_dict(model.state_dict())
        config = PruningConfig(at_step=0, method=method, amount=amount)
        layers = prunable_layers(copy, config)
        parameters = [layer.weight for layer in layers.values()]
        masks = compute_masks(layers, config)
        assert [layer.weight for layer in layers.values()] == parameters  # the optimizer's tensors stay
        assert all(not hasattr(layer, "weight_orig") for layer in layers.values())  # made permanent
        found = sparsity(layers)
        if method == "magnitude":
            assert found["0"] == pytest.approx(0.3) and found["2"] == pytest.approx(0.3)
        elif method == "global":
            assert found["all"] == pytest.approx(0.6, abs=0.01)
        else:  # whole output rows
            rows_zero = (layers["0"].weight.abs().sum(dim=1) == 0).sum().item()
            assert rows_zero == 5 and masks["0"].all(dim=1).sum().item() == 5
        # the largest-magnitude weights survive unstructured pruning
        if method != "structured":
            kept = layers["0"].weight[masks["0"]].abs().min()
            dropped = model[0].weight[~masks["0"]].abs().max()
            assert kept >= dropped - 1e-7


def test_pruning_stage_then_fine_tuning_keeps_the_sparsity_through_save_and_load(tmp_path):
    raw = dict(
        RECIPE,
        data={"train": write_data(tmp_path, 96, 1), "val": write_data(tmp_path, 48, 2), "batch_size": 16},
        callbacks=[{"type": "prune", "at_epoch": 3, "amount": 0.5, "method": "global", "modules": ["fusion", "tasks"]}],
    )
    recipe = parse_recipe(raw, load_registry())
    outcome = train(recipe, run_dir=tmp_path / "run", registry=load_registry())
    report = json.loads((outcome.run_dir / "pruning.json").read_text())
    assert report["sparsity"]["all"] == pytest.approx(0.5, abs=0.01)
    assert report["val_metrics_before_pruning"] and report["val_metrics_at_end"]["val/label/accuracy"] >= 0.8
    predictor = mmfuse.load(outcome.run_dir)
    pruned = [m for name, m in predictor.module.named_modules() if isinstance(m, torch.nn.Linear) and name.startswith(("fusion", "tasks"))]
    zeros = sum(int((m.weight == 0).sum()) for m in pruned)
    total = sum(m.weight.numel() for m in pruned)
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    # encoders were not selected and stay dense
    assert all((m.weight != 0).all() for name, m in predictor.module.named_modules() if isinstance(m, torch.nn.Linear) and name.startswith("encoders"))


def test_pruning_config_is_validated():
    with pytest.raises(ValueError, match="exactly one"):
        PruningConfig(amount=0.5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no trainable"):
        prunable_layers(model, PruningConfig(at_step=1, modules=["encoders.text"]))
