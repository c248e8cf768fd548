"""PEFT adapters on encoders: only adapters and heads train, merged and unmerged model folders
predict the same, both export with parity, IA3 on transformers and timm, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("peft")

import mmfuse  # noqa: E402
from mmfuse.export import export_model  # noqa: E402
from mmfuse.model import build_fused_model  # noqa: E402
from mmfuse.recipe import RecipeError, parse_recipe  # noqa: E402
from mmfuse.testing.media import write_png  # noqa: E402
from mmfuse.testing.tiny_models import save_tiny_bert, save_tiny_timm  # noqa: E402
from mmfuse.weights import read_state_dict  # noqa: E402

WORDS = ["cat", "dog", "bird", "tree"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft")
    lines = {"train": [], "val": []}
    for index in range(32):
        word = WORDS[index % 4]
        image = write_png(root / "img" / f"{index}.png", size=(16, 16), seed=index)
        row = {"text": f"{word} sat on the mat", "picture": str(image), "label": "animal" if word != "tree" else "plant"}
        lines["val" if index % 4 == 0 else "train"].append(json.dumps(row))
    for split, rows in lines.items():
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return {
        "root": root,
        "bert": save_tiny_bert(root / "bert"),
        "vit": save_tiny_timm(root / "vit", "test_vit", image_size=32),
    }


def recipe(project, text_peft=None, image_peft=None, **trainer) -> dict:
    text = {"type": "text_hf", "model": str(project["bert"]), "max_length": 16}
    image = {"type": "image_timm", "model": f"local-dir:{project['vit']}", "column": "picture"}
    if text_peft:
        text["peft"] = text_peft
    if image_peft:
        image["peft"] = image_peft
    return {
        "name": "peft",
        "seed": 4,
        "data": {"train": str(project["root"] / "train.jsonl"), "val": str(project["root"] / "val.jsonl"), "batch_size": 8},
        "encoders": {"text": text, "image": image},
        "fusion": {"type": "concat", "projection_dim": 8, "hidden_dims": [16], "output_dim": 8, "dropout": 0.0},
        "tasks": {"label": {"type": "classification", "labels": ["animal", "plant"]}},
        "optimizer": {"lr": 0.01},
        "trainer": {"epochs": 2, "device": "cpu", "progress": "off", "tensorboard": "off", **trainer},
    }


LORA_TEXT = {"method": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"], "dropout": 0.1}
LORA_IMAGE = {"method": "lora", "r": 2, "alpha": 4, "target_modules": ["qkv"]}


def samples(project) -> list[dict]:
    return [
        {"text": "cat sat on the mat", "picture": str(project["root"] / "img" / "1.png")},
        {"text": "tree sat on the mat"},
        {"picture": str(project["root"] / "img" / "2.png")},
    ]


@pytest.mark.slow
def test_lora_trains_only_adapters_merged_and_unmerged_folders_agree_and_export(project, tmp_path, capsys):
    from mmfuse.run import train

    unmerged = train(parse_recipe(recipe(project, LORA_TEXT, LORA_IMAGE)), run_dir=tmp_path / "unmerged")
    assert "trainable parameters:" in capsys.readouterr().out
    merged = train(
        parse_recipe(recipe(project, LORA_TEXT | {"merge_adapters": True}, LORA_IMAGE | {"merge_adapters": True})),
        run_dir=tmp_path / "merged",
    )

    # only adapters (and the heads) moved: the encoders' own weights are the pretrained ones
    start_recipe = parse_recipe(recipe(project, LORA_TEXT, LORA_IMAGE))
    torch.manual_seed(0)
    start = build_fused_model(start_recipe).state_dict()
    trained = read_state_dict(unmerged.model_dir / "model.safetensors")
    encoder_keys = [k for k in start if k.startswith("encoders.")]
    adapters = [k for k in encoder_keys if ".lora_" in k]
    assert adapters and any(".lora_B." in k for k in adapters)
    assert all(torch.equal(start[k], trained[k]) for k in encoder_keys if ".lora_" not in k), "base weights frozen"
    assert all(trained[k].abs().sum() > 0 for k in adapters if ".lora_B." in k), "lora_B starts at zero and must train"
    model = build_fused_model(start_recipe)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("encoders.")} == {k for k in adapters}
    assert {"fusion", "tasks"} <= {n.split(".")[0] for n in trainable}

    # the merged folder is a plain model: no adapter keys, no peft in its recipe
    merged_state = read_state_dict(merged.model_dir / "model.safetensors")
    assert not any(".lora_" in k or ".base_layer." in k for k in merged_state)
    merged_recipe = yaml.safe_load((merged.model_dir / "recipe.yaml").read_text())
    assert all("peft" not in slot for slot in merged_recipe["encoders"].values())
    assert "peft" in yaml.safe_load((unmerged.model_dir / "recipe.yaml").read_text())["encoders"]["text"]

    rows = samples(project)
    plain, folded = mmfuse.load(unmerged.run_dir), mmfuse.load(merged.run_dir)
    for a, b in zip(plain.predict_proba(rows), folded.predict_proba(rows)):
        for label in a["label"]:
            assert abs(a["label"][label] - b["label"][label]) <= 1e-5
    for folder in (unmerged.model_dir, merged.model_dir):
        out = export_model(folder, tmp_path / f"{folder.parent.name}.onnx", format="onnx", example=rows)
        assert json.loads(Path(f"{out}.json").read_text())["parity_max_abs_diff"] <= 1e-4


def test_ia3_on_transformers_and_timm_trains_only_its_vectors(project):
    text = {"method": "ia3", "target_modules": ["key", "value", "output.dense"], "feedforward_modules": ["output.dense"]}
    image = {"method": "ia3", "target_modules": ["qkv", "fc2"], "feedforward_modules": ["fc2"]}
    torch.manual_seed(0)
    model = build_fused_model(parse_recipe(recipe(project, text, image)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoders.")]
    assert trainable and all(".ia3_l." in n for n in trainable)
    assert any(n.startswith("encoders.text.") for n in trainable) and any(n.startswith("encoders.image.") for n in trainable)
    from mmfuse.predict import Predictor

    batch = Predictor(model, parse_recipe(recipe(project, text, image))).collate(samples(project))
    model.train()
    outputs = model(batch)
    outputs["label"].sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoders.")}
    assert all(g is not None for g in grads.values())


def test_lora_on_a_custom_module_encoder_and_merge_is_exact():
    from mmfuse.peft_adapters import merge_adapters

    raw = {
        "encoders": {"feats": {"type": "vector", "input_dim": 4, "hidden_dim": 8, "output_dim": 8,
                               "peft": {"method": "lora", "r": 2, "target_modules": r".*layers\.\d+\.0"}}},
        "fusion": {"type": "concat", "projection_dim": 8, "output_dim": 8},
        "tasks": {"label": {"type": "classification", "labels": ["a", "b"]}},
    }
    torch.manual_seed(0)
    model = build_fused_model(parse_recipe(raw)).eval()
    with torch.no_grad():  # lora_B starts at zero; give the adapters something to merge
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_()
    batch = {"inputs": {"feats": {"values": torch.randn(5, 4)}}, "present": {"feats": torch.ones(5, dtype=torch.bool)}}
    with torch.no_grad():
        before = model(batch)["label"]
        assert merge_adapters(model.encoders["feats"]) > 0
        after = model(batch)["label"]
    assert not any(".lora_" in k for k in model.state_dict())
    assert (before - after).abs().max() <= 1e-5


def test_bad_peft_settings_are_clear_errors(project):
    with pytest.raises(RecipeError) as caught:
        parse_recipe(recipe(project, {"method": "ia3", "target_modules": ["key"], "r": 4}, {"method": "lorra", "target_modules": ["qkv"]}))
    text = str(caught.value)
    assert "encoders.text.peft" in text and "r apply to method: lora only" in text
    assert "encoders.image.peft.method" in text
    with pytest.raises(ValueError, match=r"encoders\.text\.peft: .*Modules in this encoder that adapters can target: .*query"):
        build_fused_model(parse_recipe(recipe(project, {"method": "lora", "target_modules": ["nonexistent_proj"]})))


def test_init_from_a_plain_run_fills_the_base_layers_of_a_lora_encoder(project):
    from mmfuse.weight_transfer import transfer_weights

    torch.manual_seed(0)
    plain = build_fused_model(parse_recipe(recipe(project))).state_dict()
    plain = {k: v + 1.0 if k.startswith("encoders.text.") and v.is_floating_point() else v for k, v in plain.items()}
    torch.manual_seed(0)
    adapted = build_fused_model(parse_recipe(recipe(project, LORA_TEXT)))
    report = transfer_weights(adapted, plain, {"encoders.text": "encoders.text"}, source_name="plain")
    assert report.missing_in_source == [] and report.unused_in_source == []
    state = adapted.state_dict()
    query = "encoders.text.model.encoder.layer.0.attention.self.query"
    assert torch.equal(state[f"{query}.base_layer.weight"], plain[f"{query}.weight"])
    assert f"{query}.base_layer.weight" in report.loaded
