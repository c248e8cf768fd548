"""Model folders: every file is checked against the manifest's digests on load and by
`mmfuse verify`; each tampering of docs/bad_inputs.md is refused naming the file (CLI exit 2)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mmfuse.artifact import ModelFolderError, load_model, save
from mmfuse.cli import main
from tests.model_folder_plugin import reseal, seeded_model, two_modality_recipe, vector_recipe, words_registry, write_vocab


@pytest.fixture
def words_folder(tmp_path):
    registry = words_registry()
    model, recipe = seeded_model(two_modality_recipe(write_vocab(tmp_path)), seed=2, registry=registry)
    return save(model, tmp_path / "words-model", recipe, registry=registry), registry


@pytest.fixture
def vector_folder(tmp_path):
    model, recipe = seeded_model(vector_recipe(), seed=1)
    return save(model, tmp_path / "run" / "model", recipe)


def refused(folder: Path, registry=None) -> str:
    with pytest.raises(ModelFolderError) as info:
        load_model(folder, registry=registry)
    return str(info.value)


def edit_json(file: Path, change) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


# --------------------------------------------------------------------------- what the manifest holds


def test_manifest_records_a_digest_of_every_other_file(words_folder):
    folder, registry = words_folder
    manifest = json.loads((folder / "mmfuse.json").read_text())
    assert manifest["format"] == 2
    assert sorted(manifest["files"]) == [
        "assets/text/vocab.txt", "labels.json", "model.safetensors", "preprocessing.json", "recipe.yaml",
    ]
    assert manifest["files"]["model.safetensors"]["sha256"] == manifest["weights"]["sha256"]
    load_model(folder, registry=registry)  # an untouched folder loads


# --------------------------------------------------------------------------- files that change predictions


def test_deleted_tokenizer_asset_is_refused_naming_it(words_folder):
    folder, registry = words_folder
    (folder / "assets" / "text" / "vocab.txt").unlink()
    assert "assets/text/vocab.txt: missing" in refused(folder, registry)


def test_deleted_assets_folder_is_refused_naming_each_file(words_folder):
    folder, registry = words_folder
    shutil.rmtree(folder / "assets")  # was an OSError from the encoder's builder
    message = refused(folder, registry)
    assert "assets/text/vocab.txt: missing" in message and "Copy the whole model folder again" in message


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: raw["tasks"]["label"].update(labels=["z", "y", "x"]),  # label order
        lambda raw: raw["encoders"]["text"].update(dim=6, column="other"),
    ],
    ids=["label-order", "column"],
)
def test_edited_recipe_is_refused(words_folder, edit):
    folder, registry = words_folder
    raw = yaml.safe_load((folder / "recipe.yaml").read_text())
    edit(raw)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(raw))
    assert "recipe.yaml: altered" in refused(folder, registry)


@pytest.mark.parametrize("name", ["preprocessing.json", "labels.json"])
def test_edited_side_files_are_refused(words_folder, name):
    folder, registry = words_folder
    edit_json(folder / name, lambda data: data.update(extra=1))
    assert f"{name}: altered" in refused(folder, registry)


def test_extra_file_under_assets_is_refused_but_one_at_the_top_is_ignored(words_folder, capsys):
    folder, registry = words_folder
    (folder / "NOTES.txt").write_text("trained on the March data\n")
    (folder / ".DS_Store").write_bytes(b"\0")
    load_model(folder, registry=registry)  # nothing reads these
    (folder / "assets" / "text" / "added_tokens.json").write_text('{"[EVIL]": 0}')
    assert "assets/text/added_tokens.json: not in the manifest" in refused(folder, registry)


def test_pickle_in_the_folder_is_refused_even_when_the_digests_agree(words_folder):
    folder, registry = words_folder
    with open(folder / "assets" / "text" / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weight": [1.0]}, handle)  # what `pretrained: true` would make a loader read
    torch.save({"weight": torch.zeros(1)}, folder / "assets" / "text" / "extra.pt")
    raw = yaml.safe_load((folder / "recipe.yaml").read_text())
    raw["encoders"]["text"]["pretrained"] = True
    (folder / "recipe.yaml").write_text(yaml.safe_dump(raw))
    reseal(folder)
    message = refused(folder, registry)
    assert "assets/text/pytorch_model.bin: a pickle file" in message
    assert "assets/text/extra.pt: a pickle file" in message


def test_an_asset_its_encoder_cannot_read_is_the_loaders_error_naming_the_recipe(words_folder):
    folder, registry = words_folder
    edit_json(folder / "mmfuse.json", lambda m: m["asset_paths"].update({"encoders.text.vocab_file": "assets/text"}))
    message = refused(folder, registry)  # the vocabulary "file" is now a folder: IsADirectoryError
    assert "recipe.yaml: cannot rebuild the model" in message and "IsADirectoryError" in message


# --------------------------------------------------------------------------- the manifest itself


def test_deleted_manifest_is_refused_not_skipped(vector_folder):
    (vector_folder / "mmfuse.json").unlink()
    for path in (vector_folder, vector_folder.parent):  # the model folder and its run folder
        message = refused(path)
        assert "mmfuse.json is missing" in message and "cannot be verified, so it is refused" in message


def test_removed_weights_checksum_is_refused_not_skipped(vector_folder):
    edit_json(vector_folder / "mmfuse.json", lambda m: m["weights"].pop("sha256"))
    assert "malformed model manifest: 'weights.sha256': Field required" in refused(vector_folder)


def test_removed_file_digests_are_refused(vector_folder):
    edit_json(vector_folder / "mmfuse.json", lambda m: m.pop("files"))
    assert "has no digest of its files ('files')" in refused(vector_folder)
    edit_json(vector_folder / "mmfuse.json", lambda m: m.update(format=1))
    assert "format 1" in refused(vector_folder)


@pytest.mark.parametrize("value", ["one", "2", True, 1.5, None])
def test_format_that_is_not_an_integer_is_refused(vector_folder, value):
    edit_json(vector_folder / "mmfuse.json", lambda m: m.update(format=value))
    assert f"'format' must be a positive integer, got {value!r}" in refused(vector_folder)


@pytest.mark.parametrize("path", ["../../outside", "/etc", "assets/../../x"])
def test_asset_path_escaping_the_folder_is_refused(words_folder, path):
    folder, registry = words_folder
    edit_json(folder / "mmfuse.json", lambda m: m["asset_paths"].update({"encoders.text.vocab_file": path}))
    assert f"{path}: asset path of 'encoders.text.vocab_file' points outside the model folder" in refused(folder, registry)


def test_listed_file_escaping_the_folder_is_refused(vector_folder, tmp_path):
    (tmp_path / "elsewhere.txt").write_text("x")
    edit_json(vector_folder / "mmfuse.json", lambda m: m["files"].update({"../../elsewhere.txt": {"sha256": "0" * 64, "bytes": 1}}))
    assert "../../elsewhere.txt: listed in mmfuse.json with a path outside the folder" in refused(vector_folder)


def test_malformed_manifest_names_the_key(vector_folder):
    edit_json(vector_folder / "mmfuse.json", lambda m: m.update(components="all of them"))
    assert "malformed model manifest: 'components'" in refused(vector_folder)
    (vector_folder / "mmfuse.json").write_text("[" * 100_000)
    assert "cannot read the model manifest" in refused(vector_folder)


# --------------------------------------------------------------------------- mmfuse verify


def test_verify_prints_ok_and_exits_0(vector_folder, capsys):
    assert main(["verify", str(vector_folder.parent)]) == 0
    out = capsys.readouterr().out
    assert "ok, 4 files match their SHA-256 in mmfuse.json" in out and "model.safetensors" in out


def test_verify_lists_every_problem_and_exits_2(words_folder, capsys):
    folder, _ = words_folder
    (folder / "assets" / "text" / "vocab.txt").unlink()
    edit_json(folder / "labels.json", lambda data: data.update(label=["z"]))
    (folder / "assets" / "text" / "stray.txt").write_text("x")
    assert main(["verify", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "FAILED, 3 problem(s)" in err
    for expected in ("assets/text/vocab.txt: missing", "labels.json: altered", "assets/text/stray.txt: not in the manifest"):
        assert expected in err


def test_verify_without_a_manifest_exits_2(vector_folder, capsys):
    (vector_folder / "mmfuse.json").unlink()
    assert main(["verify", str(vector_folder)]) == 2
    assert "mmfuse.json is missing" in capsys.readouterr().err


def test_cli_commands_exit_2_on_a_tampered_folder(vector_folder, tmp_path, capsys):
    (vector_folder / "recipe.yaml").write_text((vector_folder / "recipe.yaml").read_text() + "\n# edited\n")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"feats": [1, 2, 3, 4]}) + "\n")
    assert main(["predict", str(vector_folder), "--data", str(data), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "recipe.yaml: altered" in capsys.readouterr().err
    assert main(["export", str(vector_folder), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "recipe.yaml: altered" in capsys.readouterr().err


def test_verify_imports_no_torch(vector_folder):
    import subprocess
    import sys

    code = (
        "import sys; from mmfuse.cli import main; status = main(['verify', sys.argv[1]]); "
        "print('status', status, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(vector_folder)], capture_output=True, text=True, timeout=120)
    assert "status 0 False" in result.stdout, result.stderr


def test_a_safetensors_file_whose_header_length_looks_like_pickle_magic_is_not_a_pickle(tmp_path):
    """A safetensors header of 640 bytes starts the file with 80 02 00 ..., the bytes of a pickle
    PROTO 2 opcode; such valid weights were refused as a pickle, depending on their header size."""
    import torch
    from safetensors.torch import save_file

    from mmfuse.folder_manifest import _is_pickle

    for target in (640, 896, 1152, 1408):
        path = tmp_path / f"w{target}.safetensors"
        for padding in range(2000):
            save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * padding})
            length = int.from_bytes(path.read_bytes()[:8], "little")
            if length >= target:
                break
        assert length == target, (target, length)
        assert path.read_bytes()[:2] == bytes([0x80, target >> 8])
        assert not _is_pickle(path)
    pickled = tmp_path / "real.pkl"
    torch.save({"w": torch.zeros(2)}, pickled, _use_new_zipfile_serialization=False)
    assert _is_pickle(pickled)
