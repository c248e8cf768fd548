"""The portable model folder: contents, fresh-process round trip, and every load error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import mmfuse
from mmfuse.artifact import ModelFolderError, load_model, save
from mmfuse.model import build_fused_model
from mmfuse.plugin_host import reset_default_registry
from mmfuse.predict import Predictor
from mmfuse.recipe import parse_recipe
from tests.model_folder_plugin import (
    TWO_MODALITY_SAMPLES,
    VECTOR_SAMPLES,
    text_image_recipe,
    text_image_samples,
    two_modality_recipe,
    vector_recipe,
    reseal,
    seeded_model,
    words_registry,
    write_vocab,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def vector_folder(tmp_path):
    model, recipe = seeded_model(vector_recipe(), seed=1)
    return save(model, tmp_path / "run" / "model", recipe), model, recipe


@pytest.fixture
def words_folder(tmp_path):
    registry = words_registry()
    vocab = write_vocab(tmp_path)
    model, recipe = seeded_model(two_modality_recipe(vocab), seed=2, registry=registry)
    return save(model, tmp_path / "words-model", recipe, registry=registry), model, recipe, registry


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "mmfuse.json").read_text())
    change(manifest)
    (folder / "mmfuse.json").write_text(json.dumps(manifest))


def _edit_recipe(folder: Path, change) -> None:
    """Change the saved recipe and record the new digest: a consistent folder of another model."""
    raw = yaml.safe_load((folder / "recipe.yaml").read_text())
    change(raw)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(raw))
    reseal(folder)


# --------------------------------------------------------------------------- contents


def test_folder_holds_weights_recipe_labels_preprocessing_and_versions(words_folder):
    folder, model, recipe, _ = words_folder
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == [
        "assets/text/vocab.txt", "labels.json", "mmfuse.json", "model.safetensors", "preprocessing.json", "recipe.yaml",
    ]
    for file in folder.rglob("*"):
        if file.is_file():  # no pickle anywhere: pickle streams start with PROTO (0x80) + version
            head = file.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}), file
    saved = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert saved["encoders"]["text"]["vocab_file"] == "assets/text/vocab.txt"  # relative to the folder
    assert saved["tasks"]["label"]["labels"] == ["x", "y", "z"]
    assert json.loads((folder / "labels.json").read_text()) == {"label": ["x", "y", "z"]}
    preprocessing = json.loads((folder / "preprocessing.json").read_text())
    assert preprocessing["text"] == {
        "column": "sentence", "modality": "text", "reads_files": False,
        "settings": {"vocab_size": 10, "lowercase": True},
    }
    assert preprocessing["feats"]["settings"] == {"input_dim": 3}
    manifest = json.loads((folder / "mmfuse.json").read_text())
    assert manifest["versions"]["mmfuse"] == mmfuse.__version__
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["plugins"] == {"mmfuse": mmfuse.__version__}
    by_slot = {c["slot"]: c for c in manifest["components"]}
    assert by_slot["encoders.feats"]["distribution"] == "mmfuse"
    assert by_slot["encoders.text"]["plugin"] == "toywords"
    assert by_slot["tasks.label"]["type"] == "mmfuse/classification"
    assert not list(folder.parent.glob(".words-model.*"))  # the staging folder is gone


def test_save_replaces_a_model_folder_but_not_other_folders(vector_folder, tmp_path):
    folder, model, recipe = vector_folder
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    save(model, folder, recipe)
    reloaded, _ = load_model(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ModelFolderError, match="not an mmfuse model folder"):
        save(model, other, recipe)
    assert (other / "keep.txt").read_text() == "mine"


def test_failed_save_leaves_the_old_folder_and_no_staging_folder(vector_folder, monkeypatch):
    folder, model, recipe = vector_folder
    before = (folder / "model.safetensors").read_bytes()

    def broken(_folder):
        raise OSError("disk full")

    monkeypatch.setattr(model.encoders["feats"], "export_assets", broken)
    with pytest.raises(OSError, match="disk full"):
        save(model, folder, recipe)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]


def test_tied_weights_are_stored_once_and_load_back(tmp_path):
    recipe = parse_recipe(vector_recipe())
    model = build_fused_model(recipe).eval()
    model.fusion.projections["feats"].weight = model.encoders["feats"].layers[1][0].weight
    folder = save(model, tmp_path / "tied", recipe)
    aliases = json.loads((folder / "mmfuse.json").read_text())["weights"]["aliases"]
    assert aliases == {"fusion.projections.feats.weight": "encoders.feats.layers.1.0.weight"}
    reloaded, _ = load_model(folder)
    assert torch.equal(reloaded.fusion.projections["feats"].weight, model.encoders["feats"].layers[1][0].weight)


# --------------------------------------------------------------------------- round trip


_CHILD = """
import json, sys
import mmfuse
from tests.model_folder_plugin import words_registry
from mmfuse.predict import load
samples = json.loads(sys.argv[2])
predictor = load(sys.argv[1], registry=words_registry()) if sys.argv[3] == "words" else mmfuse.load(sys.argv[1])
print(json.dumps({
    "predict": predictor.predict(samples),
    "proba": predictor.predict_proba(samples),
    "embed": predictor.embed(samples).tolist(),
}))
"""


def _in_fresh_process(folder: Path, samples, kind: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), json.dumps(samples), kind],
        capture_output=True, text=True, timeout=120, cwd=folder.parent, env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _assert_same(child: dict, predictor: Predictor, samples) -> None:
    assert child["predict"] == predictor.predict(samples)
    expected = predictor.predict_proba(samples)
    for got_row, want_row in zip(child["proba"], expected, strict=True):
        for task, probs in want_row.items():
            assert got_row[task].keys() == {str(k) for k in probs}
            for label, value in probs.items():
                assert got_row[task][str(label)] == pytest.approx(value, abs=1e-6)
    assert torch.allclose(torch.tensor(child["embed"]), predictor.embed(samples), atol=1e-6)


def test_fresh_process_predicts_like_the_in_memory_model(vector_folder):
    folder, model, recipe = vector_folder
    child = _in_fresh_process(folder.parent, VECTOR_SAMPLES, "vector")  # the run folder holding model/
    _assert_same(child, Predictor(model, recipe), VECTOR_SAMPLES)
    assert {row["label"] for row in child["predict"]} <= {"neg", "pos", "neutral"}


def test_moved_folder_with_assets_predicts_like_the_in_memory_model(words_folder, tmp_path):
    folder, model, recipe, _ = words_folder
    (tmp_path / "vocab.txt").unlink()  # the folder must not depend on the original vocab file
    moved = shutil.move(str(folder), str(tmp_path / "elsewhere" / "copied"))
    child = _in_fresh_process(Path(moved), TWO_MODALITY_SAMPLES, "words")
    _assert_same(child, Predictor(model, recipe), TWO_MODALITY_SAMPLES)


# --------------------------------------------------------------------------- errors


def test_disabled_plugin_names_component_distribution_and_install(vector_folder, monkeypatch):
    folder, _, _ = vector_folder
    monkeypatch.setenv("MMFUSE_DISABLE_PLUGINS", "vector")
    reset_default_registry()  # saving built the default registry before the variable was set
    with pytest.raises(ModelFolderError) as info:
        load_model(folder)
    message = str(info.value)
    assert "encoders.feats" in message and "'mmfuse/vector'" in message
    assert f"mmfuse {mmfuse.__version__}" in message and "pip install mmfuse" in message


def test_uninstalled_third_party_component_names_its_distribution(vector_folder):
    folder, _, _ = vector_folder

    def rename(manifest):
        component = next(c for c in manifest["components"] if c["slot"] == "encoders.feats")
        component.update(type="acme/tabular", plugin="acme", distribution="acme-mmfuse", version="1.2.0")

    _edit_manifest(folder, rename)
    _edit_recipe(folder, lambda raw: raw["encoders"]["feats"].update(type="acme/tabular"))
    with pytest.raises(ModelFolderError, match=r"acme/tabular.*acme-mmfuse 1\.2\.0.*pip install acme-mmfuse"):
        load_model(folder)


def test_test_local_plugin_missing_names_the_plugin(words_folder):
    folder = words_folder[0]
    with pytest.raises(ModelFolderError, match=r"encoders\.text uses encoder 'toy/words'.*plugin 'toywords'"):
        load_model(folder)


@pytest.mark.parametrize("saved", ["1.0.0", "0.9.0", f"0.{int(mmfuse.__version__.split('.')[1]) + 1}.0"])
def test_incompatible_mmfuse_version_is_refused(vector_folder, saved):
    folder = vector_folder[0]
    _edit_manifest(folder, lambda m: m["versions"].update(mmfuse=saved))
    with pytest.raises(ModelFolderError, match=rf"saved by mmfuse {saved}.*installed mmfuse {mmfuse.__version__}"):
        load_model(folder)


def test_older_minor_version_loads(vector_folder):
    folder, model, _ = vector_folder
    _edit_manifest(folder, lambda m: m["versions"].update(mmfuse="0.0.3"))
    reloaded, _ = load_model(folder)
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in reloaded.state_dict().items())


def test_newer_folder_format_is_refused(vector_folder):
    folder = vector_folder[0]
    _edit_manifest(folder, lambda m: m.update(format=99))
    with pytest.raises(ModelFolderError, match="format 99 is newer"):
        load_model(folder)


def test_plugin_of_another_major_version_is_refused(vector_folder):
    folder = vector_folder[0]
    _edit_manifest(folder, lambda m: [c.update(version="7.0.0") for c in m["components"] if c["slot"] == "fusion"])
    with pytest.raises(ModelFolderError, match=r"fusion \(mmfuse/concat\) was built by mmfuse 7\.0\.0"):
        load_model(folder)


def test_tampered_weights_fail_the_checksum(vector_folder):
    folder = vector_folder[0]
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in a tensor's bytes: safetensors itself cannot notice
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: altered"):
        load_model(folder)


@pytest.mark.parametrize("keep_bytes", [7, 200])
def test_truncated_weights_fail_cleanly_even_with_a_matching_checksum(vector_folder, keep_bytes):
    folder = vector_folder[0]
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep_bytes])
    reseal(folder)  # the digests agree, so the safetensors reader is what must refuse it
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: cannot read the weights"):
        load_model(folder)


def test_truncated_weights_fail_the_checksum(vector_folder):
    folder = vector_folder[0]
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: altered"):
        load_model(folder)


def test_changed_architecture_reports_shapes_and_missing_keys(vector_folder):
    folder = vector_folder[0]
    _edit_recipe(folder, lambda raw: raw["encoders"]["feats"].update(hidden_dim=12))
    with pytest.raises(ModelFolderError, match=r"shape mismatches.*encoders\.feats\.layers\.0\.0\.weight: file \(8, 4\) vs model \(12, 4\)"):
        load_model(folder)
    _edit_recipe(folder, lambda raw: raw["encoders"]["feats"].update(hidden_dim=8, num_layers=3))
    with pytest.raises(ModelFolderError, match=r"missing keys \(2\): encoders\.feats\.layers\.2"):
        load_model(folder)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model(tmp_path / "nothing")
    with pytest.raises(ModelFolderError, match="no mmfuse.json"):
        load_model(tmp_path)


@pytest.mark.slow
def test_text_and_image_folder_rebuilds_offline_in_a_fresh_process(tmp_path):
    model, recipe = seeded_model(text_image_recipe(tmp_path / "hub"), seed=9)
    folder = save(model, tmp_path / "model", recipe)
    samples = [s for s in text_image_samples(tmp_path) if all(isinstance(v, (str, type(None))) for v in s.values())]
    shutil.rmtree(tmp_path / "hub")  # the tokenizer and model config must come from the folder
    saved = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert saved["encoders"]["text"]["model"] == "assets/text" and saved["encoders"]["text"]["pretrained"] is False
    child = _in_fresh_process(folder, samples, "text-image")
    _assert_same(child, Predictor(model, recipe), samples)
