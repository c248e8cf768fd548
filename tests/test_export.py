"""ONNX and torch.export of a model folder: named flat inputs, parity with eager, dynamic batch, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfuse.artifact import save
from mmfuse.cli import main
from mmfuse.export import ExportError, FlatFusedModel, export_model
from mmfuse.predict import Predictor
from tests.model_folder_plugin import (
    VECTOR_SAMPLES,
    seeded_model,
    text_image_recipe,
    text_image_samples,
    two_modality_recipe,
    vector_recipe,
    words_registry,
    write_vocab,
)


@pytest.fixture
def vector_folder(tmp_path):
    model, recipe = seeded_model(vector_recipe(), seed=5)
    return save(model, tmp_path / "run" / "model", recipe), model, recipe


def _eager(model, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(batch)


def _fresh_batch(predictor: Predictor, count: int) -> dict:
    """Samples the export never saw, of another batch size, one with the modality missing."""
    generator = torch.Generator().manual_seed(count)
    samples = [{"feats": torch.randn(4, generator=generator).tolist()} for _ in range(count)]
    batch = predictor.collate(samples)
    batch["present"]["feats"][1] = False
    return batch


def test_onnx_matches_eager_on_a_new_batch_size(vector_folder, tmp_path):
    import onnxruntime

    folder, model, recipe = vector_folder
    out = export_model(folder, tmp_path / "model.onnx", format="onnx", example=VECTOR_SAMPLES)
    info = json.loads((tmp_path / "model.onnx.json").read_text())
    assert [item["name"] for item in info["inputs"]] == ["inputs.feats.values", "present.feats"]
    assert [item["name"] for item in info["outputs"]] == ["label", "score"]
    assert info["labels"] == {"label": ["neg", "pos", "neutral"]}
    assert info["parity_max_abs_diff"] <= 1e-4

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["inputs.feats.values", "present.feats"]
    batch = _fresh_batch(Predictor(model, recipe), count=5)
    label, score = session.run(
        ["label", "score"],
        {"inputs.feats.values": batch["inputs"]["feats"]["values"].numpy(),
         "present.feats": batch["present"]["feats"].numpy()},
    )
    expected = _eager(model, batch)
    assert label.shape == (5, 3)
    assert np.abs(label - expected["label"].numpy()).max() <= 1e-4
    assert np.abs(score - expected["score"].numpy()).max() <= 1e-4


def test_torch_export_program_matches_eager_after_save_and_load(vector_folder, tmp_path):
    folder, model, recipe = vector_folder
    out = export_model(folder.parent, tmp_path / "model.pt2", format="torch-export", example=VECTOR_SAMPLES)
    program = torch.export.load(str(out))
    batch = _fresh_batch(Predictor(model, recipe), count=3)
    flat = FlatFusedModel(model, {"feats": ["values"]}, ["label", "score"]).flatten_batch(batch)
    label, score = program.module()(*flat)
    expected = _eager(model, batch)
    assert (label - expected["label"]).abs().max() <= 1e-4
    assert (score - expected["score"]).abs().max() <= 1e-4


def test_export_without_samples_traces_generated_rows_and_checks_another_batch_size(vector_folder, tmp_path):
    folder = vector_folder[0]
    out = export_model(folder, tmp_path / "blank.onnx")
    info = json.loads((tmp_path / "blank.onnx.json").read_text())
    assert info["inputs"][0]["example_shape"] == [3, 4]
    assert [shapes["inputs.feats.values"] for shapes in info["parity_checked_on"]] == [[3, 4], [2, 4]]
    assert out.stat().st_size > 1000


def test_torch_export_without_samples_keeps_the_sequence_length_dynamic(tmp_path):
    # the words encoder pads a batch of missing rows to length 1: traced on those, the export
    # fixed the sequence length at 1 and rejected every real sentence
    registry = words_registry()
    model, recipe = seeded_model(two_modality_recipe(write_vocab(tmp_path)), seed=3, registry=registry)
    folder = save(model, tmp_path / "model", recipe, registry=registry)
    out = export_model(folder, tmp_path / "words.pt2", format="torch-export", registry=registry)
    checked = json.loads(Path(f"{out}.json").read_text())["parity_checked_on"]
    assert checked[0]["inputs.text.ids"] != checked[1]["inputs.text.ids"]  # traced and checked on two lengths
    predictor = Predictor(model, recipe)
    batch = predictor.collate([{"sentence": "the cat sits on the red mat and the dog runs"}, {"feats": [1.0, 2.0, 3.0]}])
    flat = FlatFusedModel(model, {"text": ["ids"], "feats": ["values"]}, ["label"])
    (label,) = torch.export.load(str(out)).module()(*flat.flatten_batch(batch))
    assert (label - _eager(model, batch)["label"]).abs().max() <= 1e-4


def test_padding_rows_fallback_warns_naming_the_size_1_input(tmp_path, monkeypatch, caplog):
    import mmfuse.testing.samples

    def no_samples(config, modality, folder):
        raise ValueError(f"no built-in sample values for modality '{modality}'")

    monkeypatch.setattr(mmfuse.testing.samples, "component_samples", no_samples)
    registry = words_registry()
    model, recipe = seeded_model(two_modality_recipe(write_vocab(tmp_path)), seed=3, registry=registry)
    folder = save(model, tmp_path / "model", recipe, registry=registry)
    with caplog.at_level("WARNING", logger="mmfuse.export"):
        export_model(folder, tmp_path / "words.pt2", format="torch-export", registry=registry)
    assert "tracing on padding rows" in caplog.text
    assert "inputs.text.ids has size 1 in dimension 1 of the example (shape [2, 1])" in caplog.text


def test_export_that_rejects_another_batch_size_is_an_error_naming_the_input(vector_folder, tmp_path):
    folder = vector_folder[0]  # one sample: torch.export fixes the batch dimension at 1
    with pytest.raises(ExportError) as info:
        export_model(folder, tmp_path / "one.pt2", format="torch-export", example=VECTOR_SAMPLES[:1])
    message = str(info.value)
    assert "export rejects a batch of another shape" in message
    assert "inputs.feats.values (traced [1, 4], checked [2, 4])" in message


def test_unknown_format_is_refused(vector_folder, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite'; choose one of onnx, torch-export"):
        export_model(vector_folder[0], tmp_path / "m.tflite", format="tflite")


def test_cli_exports_a_run_folder(vector_folder, tmp_path, capsys):
    folder = vector_folder[0]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(json.dumps(s) for s in VECTOR_SAMPLES[:3]) + "\n")
    assert main(["export", str(folder.parent), "--format", "onnx", "--samples", str(samples)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {folder.parent / 'model.onnx'} (onnx)" in out
    assert "inputs: inputs.feats.values, present.feats; outputs: label, score" in out
    assert (folder.parent / "model.onnx").is_file()


def test_cli_reports_bad_input(vector_folder, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"feats": [1, 2, 3, 4]}\nnot json\n')
    assert main(["export", str(vector_folder[0]), "--samples", str(bad)]) == 2
    assert "bad.jsonl line 2: not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "torch-export"])
def test_text_and_image_export_parity(tmp_path, format):
    model, recipe = seeded_model(text_image_recipe(tmp_path), seed=8)
    folder = save(model, tmp_path / "model", recipe)
    samples = text_image_samples(tmp_path)
    out = export_model(folder, tmp_path / f"model.{format}", format=format, example=samples)
    assert json.loads(Path(f"{out}.json").read_text())["parity_max_abs_diff"] <= 1e-4
    # a batch of another size, with a longer text and other modalities missing
    predictor = Predictor(model, recipe)
    batch = predictor.collate([
        {"text": "a small red bird sings in the green tree at night hello world video sound"},
        {"picture": samples[0]["picture"]},
        {"text": "the", "picture": samples[0]["picture"]},
    ])
    flat = FlatFusedModel(model, {"text": ["attention_mask", "input_ids"], "image": ["pixels"]}, ["label"])
    args = flat.flatten_batch(batch)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (label,) = session.run(["label"], {name: t.numpy() for name, t in zip(flat.input_names, args)})
        label = torch.from_numpy(label)
    else:
        (label,) = torch.export.load(str(out)).module()(*args)
    assert label.shape == (3, 2)
    assert (label - _eager(model, batch)["label"]).abs().max() <= 1e-4
