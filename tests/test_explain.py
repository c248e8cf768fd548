"""mmfuse explain: modality ablation and per-modality integrated gradients (Captum) rank the
modality a model uses first; token attributions for text and heat maps for images."""

from __future__ import annotations

import json

import pytest
import torch

from mmfuse.cli import main
from mmfuse.explain import explain_batch
from mmfuse.model import build_fused_model
from mmfuse.plugin_host import load_registry
from mmfuse.recipe import parse_recipe
from mmfuse.run import train
from mmfuse.testing.media import write_png
from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm
from tests.test_compression import RECIPE, write_data

pytest.importorskip("captum", reason="mmfuse explain needs captum (the 'explain' extra)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Only encoder 'a' carries the label; 'b' is noise."""
    folder = tmp_path_factory.mktemp("explain")
    raw = dict(RECIPE, data={"train": write_data(folder, 96, 1), "val": write_data(folder, 48, 2), "batch_size": 16})
    outcome = train(parse_recipe(raw, load_registry()), run_dir=folder / "run", registry=load_registry())
    return outcome.run_dir, folder / "data-2.jsonl"


def test_attribution_ranks_the_modality_the_model_uses_first(run, tmp_path, capsys):
    run_dir, manifest = run
    out = tmp_path / "why"
    assert main(["explain", str(run_dir), "--data", str(manifest), "--out", str(out), "--limit", "12", "--steps", "24"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    a, b = summary["modalities"]["a"], summary["modalities"]["b"]
    assert summary["samples"] == 12
    # trained on 96 rows, the model also leans a little on the noise: 'a' still dominates
    assert a["mean_ig_share"] > 0.6 and a["ranked_first"] > b["ranked_first"]
    assert a["mean_ablation"] > b["mean_ablation"] + 0.2
    printed = capsys.readouterr().out
    assert printed.index("\na ") < printed.index("\nb ")  # the table lists the leading modality first
    sample = json.loads(next(out.glob("sample-*/explanation.json")).read_text())
    assert sample["ranking"][0] == "a" and set(sample["modalities"]) == {"a", "b"}
    assert (next(out.glob("sample-*")) / "a.png").is_file()


def test_a_model_that_uses_one_modality_by_construction_ranks_it_first(run):
    """Encoder 'b' with all its weights zeroed gives the same output whatever its input."""
    from mmfuse.artifact import load_model
    from mmfuse.cli.model_data import model_data_for
    from mmfuse.data.manifest import read_manifest

    run_dir, manifest = run
    model, recipe = load_model(run_dir)
    with torch.no_grad():
        for parameter in model.encoders["b"].parameters():
            parameter.zero_()
    data = model_data_for(model, recipe, read_manifest(manifest), batch_size=1, num_workers=0, device=torch.device("cpu"), with_targets=False)
    for count, batch in enumerate(data.batches()):
        if count == 8:
            break
        explanation = explain_batch(model, batch, "label", data.dataset.preprocessors, steps=16)
        assert explanation.ranking()[0] == "a"
        assert explanation.integrated_gradients["b"] == 0.0
        assert abs(explanation.integrated_gradients["a"]) > 0


def test_integrated_gradients_complete_to_the_score_gap(run):
    """Σ attributions of a modality ≈ score(x) − score(that modality's inputs at zero)."""
    from mmfuse.artifact import load_model
    from mmfuse.cli.model_data import model_data_for
    from mmfuse.data.manifest import read_manifest

    run_dir, manifest = run
    model, recipe = load_model(run_dir)
    data = model_data_for(model, recipe, read_manifest(manifest), batch_size=1, num_workers=0, device=torch.device("cpu"), with_targets=False)
    batch = next(data.batches())
    explanation = explain_batch(model, batch, "label", data.dataset.preprocessors, steps=64)
    zeroed = {**batch, "inputs": {**batch["inputs"], "a": {"values": torch.zeros_like(batch["inputs"]["a"]["values"])}}}
    with torch.no_grad():
        full = model(batch)["label"].softmax(-1)[0, explanation.target]
        base = model(zeroed)["label"].softmax(-1)[0, explanation.target]
    assert explanation.integrated_gradients["a"] == pytest.approx(float(full - base), abs=0.02)
    assert explanation.convergence_delta["a"] < 0.02


def test_text_tokens_and_image_heat_maps(tmp_path):
    bert = save_tiny_bert(tmp_path / "bert")
    timm_dir = save_tiny_timm(tmp_path / "timm", model_name="test_resnet", image_size=32)
    raw = {
        "encoders": {
            "text": {"type": "text_hf", "model": str(bert), "max_length": 12},
            "image": {"type": "image_timm", "model": f"local-dir:{timm_dir}", "image_size": 32},
        },
        "fusion": {"type": "concat", "output_dim": 16},
        "tasks": {"label": {"type": "classification", "labels": ["x", "y"]}},
    }
    recipe = parse_recipe(raw, load_registry())
    torch.manual_seed(0)
    model = build_fused_model(recipe, load_registry()).eval()
    preprocessors = {name: encoder.preprocessor() for name, encoder in model.encoders.items()}
    text = preprocessors["text"]("the cat sat")
    image = preprocessors["image"](str(write_png(tmp_path / "i.png", (32, 32))))
    batch = {
        "inputs": {"text": preprocessors["text"].collate([text]), "image": preprocessors["image"].collate([image])},
        "present": {"text": torch.tensor([True]), "image": torch.tensor([True])},
        "index": torch.tensor([0]),
    }
    explanation = explain_batch(model, batch, "label", preprocessors, steps=8)
    tokens = [t for t, _ in explanation.tokens["text"]]
    assert tokens == preprocessors["text"].tokenizer.convert_ids_to_tokens(text["input_ids"].tolist())
    heat = explanation.maps["image"]
    assert tuple(heat.shape) == tuple(image["pixels"].shape[-2:])
    assert set(explanation.integrated_gradients) == {"text", "image"} and set(explanation.ablation) == {"text", "image"}
